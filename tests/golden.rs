//! Reproduces the PyTorch reference's own numbers (`tests/golden/*.json`, see its README):
//! logits, loss, logits gradient, FDFA's output tangent, every gradient, and the state after
//! both Adam optimizers stepped, for two steps of every rule on a small FC and a small CNN.

use std::collections::BTreeMap;

use fdfa::layers::{State, StateMut};
use fdfa::model::Model;
use fdfa::optim::{AdamConfig, Parameters};
use fdfa::rules::{Dfa, Dkp, Fdfa, Learned, LearningRule};
use fdfa::{Tensor, init};
use serde_json::Value;

mod common;

use common::models::{golden_cnn, golden_fc};

const REL: f64 = 1e-4;
const ABS: f64 = 1e-6;

fn tensor(v: &Value) -> Tensor {
    let shape: Vec<usize> = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data: Vec<f32> = match &v["data"] {
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        x => vec![x.as_f64().unwrap() as f32],
    };
    Tensor::from_vec(&shape, data).unwrap()
}

fn values(v: &Value) -> Vec<f64> {
    match &v["data"] {
        Value::Array(a) => a.iter().map(|x| x.as_f64().unwrap()).collect(),
        x => vec![x.as_f64().unwrap()],
    }
}

/// Fails with the worst element when `got` is not within `ABS + REL |want|` of `want`.
fn assert_close(what: &str, got: &[f32], want: &[f64]) {
    assert_close_scaled(
        what,
        got,
        want,
        &want.iter().map(|w| w.abs()).collect::<Vec<_>>(),
    );
}

/// Fails with the worst element when `got` is not within `ABS + REL scale` of `want`.
///
/// `scale` is `|want|` for a plain comparison. For a value that is a sum of terms which
/// cancel, the rounding error of any implementation is proportional to the sum of the terms'
/// magnitudes, not to the (much smaller) result, and `scale` is that sum.
fn assert_close_scaled(what: &str, got: &[f32], want: &[f64], scale: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, ((&g, &w), &sc)) in got.iter().zip(want).zip(scale).enumerate() {
        let excess = (g as f64 - w).abs() / (ABS + REL * sc);
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    let i = worst.1;
    if std::env::var("GOLDEN_DEBUG").is_ok() {
        eprintln!("{what}: worst excess {:.3} at {i}", worst.0);
    }
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} is {} but the reference has {} (tolerance {ABS} + {REL} * |ref|)",
        got[i],
        want[i]
    );
}

fn adam(v: &Value) -> fdfa::optim::Adam {
    AdamConfig {
        lr: v["lr"].as_f64().unwrap() as f32,
        betas: (
            v["betas"][0].as_f64().unwrap() as f32,
            v["betas"][1].as_f64().unwrap() as f32,
        ),
        eps: v["eps"].as_f64().unwrap() as f32,
        weight_decay: v["weight_decay"].as_f64().unwrap() as f32,
    }
    .init()
    .unwrap()
}

/// Sets the model's and the rule's state from a `state_dict`.
fn load_state(model: &mut Model, rule: &mut dyn LearningRule, state: &BTreeMap<String, Value>) {
    let mut seen = 0;
    model.visit_state_mut(&mut |name, s| {
        let v = &state[name];
        match s {
            StateMut::Param(mut p) => p.set_value(&tensor(v)).unwrap(),
            StateMut::Buffer(mut b) => b.set(&tensor(v)).unwrap(),
            StateMut::Counter(c) => *c = values(v)[0] as u64,
        }
        seen += 1;
    });
    if let Some(fb) = rule.feedback_mut() {
        fb.visit_mut(&mut |name, mut p| {
            p.set_value(&tensor(&state[name])).unwrap();
            seen += 1;
        });
    }
    let feedbacks = state.keys().filter(|k| k.ends_with(".feedbacks")).count();
    let expected = if rule.feedback_mut().is_some() {
        state.len()
    } else {
        state.len() - feedbacks
    };
    assert_eq!(
        seen, expected,
        "every tensor of the state_dict has a counterpart"
    );
}

/// Compares the model's and the rule's state with a `state_dict`.
fn check_state(
    what: &str,
    model: &mut Model,
    rule: &mut dyn LearningRule,
    state: &BTreeMap<String, Value>,
) {
    model.visit_state(&mut |name, s| {
        let want = values(&state[name]);
        match s {
            State::Param(p) => assert_close(&format!("{what} {name}"), p.value().data(), &want),
            State::Buffer(b) => assert_close(&format!("{what} {name}"), b.data(), &want),
            State::Counter(c) => assert_eq!(c as f64, want[0], "{what} {name}"),
        }
    });
    if let Some(fb) = rule.feedback_mut() {
        fb.visit_mut(&mut |name, p| {
            assert_close(
                &format!("{what} {name}"),
                p.value().data(),
                &values(&state[name]),
            )
        });
    }
}

fn run(file: &str) {
    let text = std::fs::read_to_string(format!(
        "{}/tests/golden/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut model = if doc["case"] == "fc" {
        golden_fc()
    } else {
        golden_cnn()
    };
    let kind = doc["rule"].as_str().unwrap();
    let mut rng = init::rng(0);
    // FDFA stays concrete: the golden files fix its directions.
    let mut fdfa_rule = Fdfa::new(&model);
    let mut other: Box<dyn LearningRule> = match kind {
        "BP" | "FDFA" => Box::new(fdfa::rules::Bp::new()),
        "DFA" => Box::new(Dfa::new(&model, &mut rng)),
        "DKP" => Box::new(Dkp::new(&model)),
        other => panic!("unknown rule {other}"),
    };
    let is_fdfa = kind == "FDFA";
    macro_rules! rule {
        () => {
            if is_fdfa {
                &mut fdfa_rule as &mut dyn LearningRule
            } else {
                other.as_mut()
            }
        };
    }
    let mut state: BTreeMap<String, Value> =
        serde_json::from_value(doc["state_init"].clone()).unwrap();
    load_state(&mut model, rule!(), &state);
    let mut forward_opt = adam(&doc["optimizer"]["forward"]);
    let mut feedback_opt = adam(&doc["optimizer"]["feedback"]);

    for (k, step) in doc["steps"].as_array().unwrap().iter().enumerate() {
        let what = format!("{file} step {k}");
        let x = tensor(&step["x"]);
        let targets: Vec<usize> = step["target"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let report = if is_fdfa {
            let directions: Vec<Tensor> = step["directions"]
                .as_array()
                .unwrap()
                .iter()
                .map(tensor)
                .collect();
            fdfa_rule
                .step_with_directions(&mut model, &x, &targets, &directions)
                .unwrap()
        } else {
            rule!().step(&mut model, &x, &targets, &mut rng).unwrap()
        };
        let out = model.output().unwrap();
        assert_close(
            &format!("{what} logits"),
            out.primal().data(),
            &values(&step["logits"]),
        );
        assert_close(
            &format!("{what} loss"),
            &[report.loss],
            &[step["loss"].as_f64().unwrap()],
        );
        if is_fdfa {
            assert_close(
                &format!("{what} output tangent"),
                out.tangent().unwrap().data(),
                &values(&step["output_tangent"]),
            );
        }
        let grads: BTreeMap<String, Value> = serde_json::from_value(step["grads"].clone()).unwrap();
        let mut checked = 0;
        // `visit_state` shows every parameter in PyTorch's layout, as the reference has them.
        model.visit_state(&mut |name, s| {
            if let (Some(want), State::Param(p)) = (grads.get(name), s) {
                assert_close(
                    &format!("{what} grad {name}"),
                    p.grad().data(),
                    &values(want),
                );
                checked += 1;
            }
        });
        let mut point = 0;
        let before = &state;
        rule!().visit_learned(&mut |name, p| {
            let want = values(&grads[name]);
            let scale: Vec<f64> = if is_fdfa {
                // B - sum_i d_i u_i^T / N: the products cancel (terms of magnitude 5 summing
                // to 0.01 occur here), so f32 rounding of d is amplified; the bound is
                // relative to |B| + sum_i |d_i| |u_i| / N.
                let d = values(&step["output_tangent"]);
                let u = values(&step["directions"][point]);
                let b = values(&before[name]);
                let (n, c) = (x.batch(), d.len() / x.batch());
                let f = u.len() / n;
                (0..want.len())
                    .map(|j| {
                        let (cls, feat) = (j / f, j % f);
                        b[j].abs()
                            + (0..n)
                                .map(|i| (d[i * c + cls] * u[i * f + feat]).abs())
                                .sum::<f64>()
                                / n as f64
                    })
                    .collect()
            } else {
                want.iter().map(|w| w.abs()).collect()
            };
            assert_close_scaled(
                &format!("{what} grad {name}"),
                p.grad().data(),
                &want,
                &scale,
            );
            point += 1;
            checked += 1;
        });
        assert_eq!(
            checked,
            grads.len(),
            "{what}: every reference gradient was compared"
        );

        // Adam runs on the reference's gradients. Gradients that are zero in exact arithmetic
        // (a bias followed by BatchNorm) come out as f32 rounding noise of ~1e-9 here and
        // ~1e-17 in the float64 reference; Adam divides by their own magnitude, so that noise
        // alone would move such a parameter by up to `lr`. The gradients were compared above;
        // this compares the optimizers.
        model.visit_state_mut(&mut |name, s| {
            if let (Some(want), StateMut::Param(mut p)) = (grads.get(name), s) {
                p.set_grad(&tensor(want)).unwrap();
            }
        });
        rule!().visit_learned(&mut |name, mut p| p.set_grad(&tensor(&grads[name])).unwrap());
        feedback_opt.step(&mut Learned(rule!())).unwrap();
        forward_opt.step(&mut model as &mut dyn Parameters).unwrap();
        let after: BTreeMap<String, Value> =
            serde_json::from_value(step["state_after"].clone()).unwrap();
        check_state(&format!("{what} after Adam"), &mut model, rule!(), &after);
        // The next step starts from the reference's state, so each step is checked on its own.
        load_state(&mut model, rule!(), &after);
        state = after;
    }
}

macro_rules! golden {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(#[test] fn $name() { run($file); })*
    };
}

golden! {
    fc_bp => "fc_bp.json",
    fc_dfa => "fc_dfa.json",
    fc_dkp => "fc_dkp.json",
    fc_fdfa => "fc_fdfa.json",
    cnn_bp => "cnn_bp.json",
    cnn_dfa => "cnn_dfa.json",
    cnn_dkp => "cnn_dkp.json",
    cnn_fdfa => "cnn_fdfa.json",
}

// ---------------------------------------------------------------------------------------------
// FDFA's output tangent, bounded by the magnitude of its terms.
//
// The tangent reaching the logits is a long sum: every layer's JVP is a dot product, and
// BatchNorm's, `(dt - mean(dt) - xh mean(xh dt)) / sigma`, subtracts nearly equal numbers when
// the batch is small. The rounding error of a float32 implementation of such a computation is
// bounded by the unit roundoff times the number of roundings along the way times the same
// computation carried out on the terms' magnitudes (every coefficient and every input replaced
// by its absolute value, every subtraction by an addition): Higham's running error bound for
// sums of products, composed layer by layer (a dot product of `k` terms contributes `k`
// roundings, and the error it receives is carried by the same absolute coefficients, so the
// counts add along the path). The coefficients themselves (BatchNorm's `xh` and `sigma`, the
// ReLU masks, the pooling choices) come from the float32 primal pass; their relative errors
// are of the same order as one rounding each, which the few elementwise roundings counted per
// block stand for, so the bound holds to first order. The code below carries the magnitude
// `m` in float64 beside the primal value and the tangent, from the reference's state, input
// and directions.

/// What the magnitude `m` carried beside an activation bounds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bound {
    /// The sum of the magnitudes of the terms of the tangent (forward-mode JVP).
    TangentTerms,
    /// How far the activation can move, to first order, when every parameter moves by up to
    /// its drift.
    Perturbation,
}

/// A batch of `[n, c, h, w]` activations (`h = w = 1` for features) with its tangent and a
/// magnitude `m` (see [`Bound`]).
#[derive(Clone)]
struct Carried {
    dims: [usize; 4],
    v: Vec<f64>,
    t: Vec<f64>,
    m: Vec<f64>,
}

impl Carried {
    fn input(dims: [usize; 4], v: Vec<f64>) -> Self {
        let len = v.len();
        assert_eq!(len, dims.iter().product::<usize>());
        Self {
            dims,
            v,
            t: vec![0.0; len],
            m: vec![0.0; len],
        }
    }

    fn at(&self, n: usize, c: usize, y: usize, x: usize) -> usize {
        let [_, cs, h, w] = self.dims;
        ((n * cs + c) * h + y) * w + x
    }

    /// Adds a feedback point's direction to the tangent.
    fn point(mut self, u: &[f64]) -> Self {
        assert_eq!(u.len(), self.t.len());
        for ((t, m), &d) in self.t.iter_mut().zip(&mut self.m).zip(u) {
            *t += d;
            *m += d.abs();
        }
        self
    }

    /// `weight` `[out, c h w]` (flattening the features), `bias` `[out]`, moving by up to
    /// `dw` and `db`.
    fn linear(&self, (weight, dw): (&[f64], &[f64]), (bias, db): (&[f64], &[f64])) -> Self {
        let n = self.dims[0];
        let inp = self.v.len() / n;
        let out = bias.len();
        assert_eq!(weight.len(), out * inp);
        let mut r = Self::input([n, out, 1, 1], vec![0.0; n * out]);
        for s in 0..n {
            for o in 0..out {
                let (mut v, mut t, mut m) = (bias[o], 0.0, db[o]);
                for k in 0..inp {
                    let (wk, x) = (weight[o * inp + k], s * inp + k);
                    v += wk * self.v[x];
                    t += wk * self.t[x];
                    m += wk.abs() * self.m[x] + dw[o * inp + k] * self.v[x].abs();
                }
                (r.v[s * out + o], r.t[s * out + o], r.m[s * out + o]) = (v, t, m);
            }
        }
        r
    }

    /// 3x3 convolution with padding 1: `weight` `[out, c, 3, 3]`.
    fn conv3x3(&self, (weight, dw): (&[f64], &[f64]), (bias, db): (&[f64], &[f64])) -> Self {
        let [n, c, h, w] = self.dims;
        let out = bias.len();
        let mut r = Self::input([n, out, h, w], vec![0.0; n * out * h * w]);
        for s in 0..n {
            for o in 0..out {
                for y in 0..h {
                    for x in 0..w {
                        let (mut v, mut t, mut m) = (bias[o], 0.0, db[o]);
                        for i in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let (yy, xx) = (y + ky, x + kx);
                                    if yy < 1 || xx < 1 || yy > h || xx > w {
                                        continue;
                                    }
                                    let k = ((o * c + i) * 3 + ky) * 3 + kx;
                                    let j = self.at(s, i, yy - 1, xx - 1);
                                    v += weight[k] * self.v[j];
                                    t += weight[k] * self.t[j];
                                    m += weight[k].abs() * self.m[j] + dw[k] * self.v[j].abs();
                                }
                            }
                        }
                        let k = r.at(s, o, y, x);
                        (r.v[k], r.t[k], r.m[k]) = (v, t, m);
                    }
                }
            }
        }
        r
    }

    /// BatchNorm in training mode, statistics per channel over batch and space. The tangent
    /// is `gamma (dt - mean(dt) - xh mean(xh dt)) / sigma`; its terms' magnitude, and the
    /// first-order bound on a perturbation, the same with every minus a plus and every
    /// factor in absolute value. Also returns, per channel, bounds on how far the batch mean
    /// and the unbiased batch variance (what the running statistics take in) can move.
    fn batch_norm(
        &self,
        (gamma, dgamma): (&[f64], &[f64]),
        (beta, dbeta): (&[f64], &[f64]),
    ) -> (Self, Vec<f64>, Vec<f64>) {
        let [n, c, h, w] = self.dims;
        let count = (n * h * w) as f64;
        let mut r = self.clone();
        let (mut mean_moves, mut var_moves) = (vec![0.0; c], vec![0.0; c]);
        for ch in 0..c {
            let idx: Vec<usize> = (0..n)
                .flat_map(|s| (0..h * w).map(move |p| (s * c + ch) * h * w + p))
                .collect();
            let mean = idx.iter().map(|&i| self.v[i]).sum::<f64>() / count;
            let var = idx.iter().map(|&i| (self.v[i] - mean).powi(2)).sum::<f64>() / count;
            let sigma = (var + 1e-5).sqrt();
            let xh: Vec<f64> = idx.iter().map(|&i| (self.v[i] - mean) / sigma).collect();
            let mean_t = idx.iter().map(|&i| self.t[i]).sum::<f64>() / count;
            let mean_xt = idx
                .iter()
                .zip(&xh)
                .map(|(&i, x)| x * self.t[i])
                .sum::<f64>()
                / count;
            let mean_m = idx.iter().map(|&i| self.m[i]).sum::<f64>() / count;
            let mean_xm = idx
                .iter()
                .zip(&xh)
                .map(|(&i, x)| x.abs() * self.m[i])
                .sum::<f64>()
                / count;
            mean_moves[ch] = mean_m;
            // d var_unbiased = 2 sum (x - mean)(dx - d mean) / (count - 1).
            var_moves[ch] = 2.0
                * idx
                    .iter()
                    .map(|&i| (self.v[i] - mean).abs() * (self.m[i] + mean_m))
                    .sum::<f64>()
                / (count - 1.0);
            for (&i, &x) in idx.iter().zip(&xh) {
                r.v[i] = gamma[ch] * x + beta[ch];
                r.t[i] = gamma[ch] * (self.t[i] - mean_t - x * mean_xt) / sigma;
                r.m[i] = gamma[ch].abs() * (self.m[i] + mean_m + x.abs() * mean_xm) / sigma
                    + dgamma[ch] * x.abs()
                    + dbeta[ch];
            }
        }
        (r, mean_moves, var_moves)
    }

    fn relu(mut self, bound: Bound) -> Self {
        for i in 0..self.v.len() {
            if self.v[i] <= 0.0 {
                // A perturbation can cross the kink: relu is 1-Lipschitz.
                let m = match bound {
                    Bound::TangentTerms => 0.0,
                    Bound::Perturbation => (self.m[i] + self.v[i]).max(0.0),
                };
                (self.v[i], self.t[i], self.m[i]) = (0.0, 0.0, m);
            }
        }
        self
    }

    /// Max pooling, window 3, stride 2: value and tangent of the maximum; the magnitude of
    /// the maximum's terms, or for a perturbation the largest in the window (the maximum is
    /// 1-Lipschitz in the largest change).
    fn max_pool3s2(&self, bound: Bound) -> Self {
        let [n, c, h, w] = self.dims;
        let (oh, ow) = ((h - 3) / 2 + 1, (w - 3) / 2 + 1);
        let mut r = Self::input([n, c, oh, ow], vec![0.0; n * c * oh * ow]);
        for s in 0..n {
            for ch in 0..c {
                for y in 0..oh {
                    for x in 0..ow {
                        let mut best = self.at(s, ch, 2 * y, 2 * x);
                        let mut largest = 0.0f64;
                        for ky in 0..3 {
                            for kx in 0..3 {
                                let j = self.at(s, ch, 2 * y + ky, 2 * x + kx);
                                if self.v[j] > self.v[best] {
                                    best = j;
                                }
                                largest = largest.max(self.m[j]);
                            }
                        }
                        let k = r.at(s, ch, y, x);
                        let m = match bound {
                            Bound::TangentTerms => self.m[best],
                            Bound::Perturbation => largest,
                        };
                        (r.v[k], r.t[k], r.m[k]) = (self.v[best], self.t[best], m);
                    }
                }
            }
        }
        r
    }

    /// Adaptive average pooling to 2x2 (PyTorch's windows `[floor(i h / 2), ceil((i+1) h / 2))`).
    fn adaptive_avg_pool2(&self) -> Self {
        let [n, c, h, w] = self.dims;
        let mut r = Self::input([n, c, 2, 2], vec![0.0; n * c * 4]);
        for s in 0..n {
            for ch in 0..c {
                for y in 0..2 {
                    for x in 0..2 {
                        let (y0, y1) = (y * h / 2, ((y + 1) * h).div_ceil(2));
                        let (x0, x1) = (x * w / 2, ((x + 1) * w).div_ceil(2));
                        let cnt = ((y1 - y0) * (x1 - x0)) as f64;
                        let k = r.at(s, ch, y, x);
                        for yy in y0..y1 {
                            for xx in x0..x1 {
                                let j = self.at(s, ch, yy, xx);
                                r.v[k] += self.v[j] / cnt;
                                r.t[k] += self.t[j] / cnt;
                                r.m[k] += self.m[j] / cnt;
                            }
                        }
                    }
                }
            }
        }
        r
    }

    fn flatten(mut self) -> Self {
        let n = self.dims[0];
        self.dims = [n, self.v.len() / n, 1, 1];
        self
    }
}

/// The golden networks in float64, from a `state_dict` whose parameters may each move by up
/// to `drift` (by name; none when absent).
struct Replica<'a> {
    state: &'a BTreeMap<String, Value>,
    drift: &'a BTreeMap<String, Vec<f64>>,
    bound: Bound,
    /// Per BatchNorm buffer (`<layer>.running_mean`, `<layer>.running_var`): how far the
    /// batch statistic it takes in can move.
    running: BTreeMap<String, Vec<f64>>,
}

impl Replica<'_> {
    fn param(&self, name: &str) -> (Vec<f64>, Vec<f64>) {
        let v = values(&self.state[name]);
        let d = self
            .drift
            .get(name)
            .cloned()
            .unwrap_or_else(|| vec![0.0; v.len()]);
        (v, d)
    }

    fn linear(&self, a: &Carried, layer: &str) -> Carried {
        let (w, dw) = self.param(&format!("{layer}.weight"));
        let (b, db) = self.param(&format!("{layer}.bias"));
        a.linear((&w, &dw), (&b, &db))
    }

    fn conv(&self, a: &Carried, layer: &str) -> Carried {
        let (w, dw) = self.param(&format!("{layer}.weight"));
        let (b, db) = self.param(&format!("{layer}.bias"));
        a.conv3x3((&w, &dw), (&b, &db))
    }

    fn bn(&mut self, a: &Carried, layer: &str) -> Carried {
        let (g, dg) = self.param(&format!("{layer}.weight"));
        let (b, db) = self.param(&format!("{layer}.bias"));
        let (r, mean, var) = a.batch_norm((&g, &dg), (&b, &db));
        self.running.insert(format!("{layer}.running_mean"), mean);
        self.running.insert(format!("{layer}.running_var"), var);
        r
    }

    /// The logits with their tangent and `m`, given the feedback points' directions, and the
    /// roundings a float32 implementation makes along the longest path to an output tangent
    /// element (the lengths of the sums it computes, layer by layer, plus a few elementwise
    /// operations per layer).
    fn logits(
        &mut self,
        case: &str,
        x: &[f64],
        n: usize,
        directions: &[Vec<f64>],
    ) -> (Carried, f64) {
        let bound = self.bound;
        if case == "fc" {
            let a = Carried::input([n, 6, 1, 1], x.to_vec());
            let a = self.linear(&a, "fc_hidden.0");
            let a = self.bn(&a, "bn_hidden.0").relu(bound).point(&directions[0]);
            let a = self.linear(&a, "fc_hidden.1");
            let a = self.bn(&a, "bn_hidden.1").relu(bound).point(&directions[1]);
            // Sums of 6, n, n, 5, n, n, 4 terms; 6 elementwise roundings per block.
            let roundings = (6 + 5 + 4 + 4 * n + 3 * 6) as f64;
            (self.linear(&a, "fc_out"), roundings)
        } else {
            let a = Carried::input([n, 2, 8, 8], x.to_vec());
            let a = self.conv(&a, "conv_1");
            let a = self.bn(&a, "bn_1").relu(bound).point(&directions[0]);
            let a = self.conv(&a, "conv_2");
            let a = self.bn(&a, "bn_2").relu(bound).max_pool3s2(bound);
            let a = a.adaptive_avg_pool2().flatten().point(&directions[1]);
            let a = self.linear(&a, "linear_1");
            let a = self.bn(&a, "linear_1_bn").relu(bound).point(&directions[2]);
            // Sums of 18, 64 n, 64 n, 27, 64 n, 64 n, 4, 16, n, n, 5 terms; 6 elementwise
            // roundings per block.
            let roundings = (18 + 27 + 4 + 16 + 5 + 256 * n + 2 * n + 4 * 6) as f64;
            (self.linear(&a, "fc_out"), roundings)
        }
    }
}

/// The logits of a golden network in float64 with their tangent and the magnitude of its
/// terms, and the roundings along the longest path ([`Replica::logits`]).
fn carried_logits(
    case: &str,
    state: &BTreeMap<String, Value>,
    x: &[f64],
    n: usize,
    directions: &[Vec<f64>],
) -> (Carried, f64) {
    let no_drift = BTreeMap::new();
    let mut replica = Replica {
        state,
        drift: &no_drift,
        bound: Bound::TangentTerms,
        running: BTreeMap::new(),
    };
    replica.logits(case, x, n, directions)
}

/// Float32's unit roundoff.
const UNIT_ROUNDOFF: f64 = f32::EPSILON as f64 / 2.0;

/// Runs the crate's FDFA step from `state` on `x` with `directions` and returns the tangent
/// reaching its logits.
fn crate_output_tangent(
    case: &str,
    state: &BTreeMap<String, Value>,
    x: &Tensor,
    directions: &[Tensor],
) -> Vec<f32> {
    let mut model = if case == "fc" {
        golden_fc()
    } else {
        golden_cnn()
    };
    let mut rule = Fdfa::new(&model);
    load_state(&mut model, &mut rule, state);
    let targets: Vec<usize> = (0..x.batch()).map(|i| i % 3).collect();
    rule.step_with_directions(&mut model, x, &targets, directions)
        .unwrap();
    model.output().unwrap().tangent().unwrap().data().to_vec()
}

/// Fails unless every element of `got` lies within `K u m` of `exact`, `K` the roundings of
/// the longest path, `u` float32's unit roundoff and `m` the magnitude of the element's terms.
fn assert_within_terms(what: &str, got: &[f32], exact: &Carried, roundings: f64) {
    assert_eq!(got.len(), exact.t.len(), "{what}: length");
    let mut worst = (0.0f64, 0usize);
    for (i, &g) in got.iter().enumerate() {
        // The smallest normal float32 covers an element whose terms are all zero.
        let bound = roundings * UNIT_ROUNDOFF * exact.m[i] + f32::MIN_POSITIVE as f64;
        let ratio = (g as f64 - exact.t[i]).abs() / bound;
        if ratio > worst.0 {
            worst = (ratio, i);
        }
    }
    let i = worst.1;
    if std::env::var("GOLDEN_DEBUG").is_ok() {
        eprintln!("{what}: worst error / bound {:.4} at {i}", worst.0);
    }
    assert!(
        worst.0 <= 1.0,
        "{what}: element {i} is {} but exactly {} (terms of magnitude {}, {roundings} roundings)",
        got[i],
        exact.t[i],
        exact.m[i]
    );
}

/// A float32-representable standard normal sample stream (splitmix64 and Box-Muller), so the
/// exact computation sees the very numbers the crate gets.
fn normals(seed: u64, len: usize) -> Vec<f64> {
    let mut s = seed;
    let mut uniform = || {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    };
    (0..len)
        .map(|_| {
            let (a, b) = (uniform(), uniform());
            ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32 as f64
        })
        .collect()
}

fn to_tensor(dims: &[usize], v: &[f64]) -> Tensor {
    Tensor::from_vec(dims, v.iter().map(|&x| x as f32).collect()).unwrap()
}

#[test]
fn fdfa_output_tangent_within_the_magnitude_of_its_terms() {
    for case in ["fc", "cnn"] {
        let file = format!("{case}_fdfa.json");
        let text = std::fs::read_to_string(format!(
            "{}/tests/golden/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let doc: Value = serde_json::from_str(&text).unwrap();
        let mut state: BTreeMap<String, Value> =
            serde_json::from_value(doc["state_init"].clone()).unwrap();
        for (k, step) in doc["steps"].as_array().unwrap().iter().enumerate() {
            let what = format!("{file} step {k}");
            let x = tensor(&step["x"]);
            let n = x.batch();
            let directions: Vec<Vec<f64>> = step["directions"]
                .as_array()
                .unwrap()
                .iter()
                .map(values)
                .collect();
            let (exact, roundings) =
                carried_logits(case, &state, &values(&step["x"]), n, &directions);
            // The float64 model is the reference's computation: its logits and tangent agree
            // with the reference's to float64 rounding, relative to the terms' magnitude.
            let (logits, tangent) = (values(&step["logits"]), values(&step["output_tangent"]));
            for i in 0..tangent.len() {
                assert!(
                    (exact.v[i] - logits[i]).abs() <= 1e-9 * (1.0 + logits[i].abs()),
                    "{what} logit {i}"
                );
                assert!(
                    (exact.t[i] - tangent[i]).abs() <= 1e-12 * exact.m[i] + 1e-15,
                    "{what} output tangent {i}: {} against the reference's {}",
                    exact.t[i],
                    tangent[i]
                );
            }
            let dirs: Vec<Tensor> = step["directions"]
                .as_array()
                .unwrap()
                .iter()
                .map(tensor)
                .collect();
            let got = crate_output_tangent(case, &state, &x, &dirs);
            assert_within_terms(&format!("{what} output tangent"), &got, &exact, roundings);
            state = serde_json::from_value(step["state_after"].clone()).unwrap();
        }
        // Other batch sizes, where BatchNorm over two or three samples cancels hardest: the
        // float64 model is the reference here.
        let init: BTreeMap<String, Value> =
            serde_json::from_value(doc["state_init"].clone()).unwrap();
        let (input, points): (&[usize], Vec<Vec<usize>>) = if case == "fc" {
            (&[6], vec![vec![5], vec![4]])
        } else {
            (&[2, 8, 8], vec![vec![3, 8, 8], vec![16], vec![5]])
        };
        for (j, n) in [2usize, 3, 7, 16].into_iter().enumerate() {
            let dims = |shape: &[usize]| [vec![n], shape.to_vec()].concat();
            let len = |shape: &[usize]| n * shape.iter().product::<usize>();
            let x = normals(100 + j as u64, len(input));
            let directions: Vec<Vec<f64>> = points
                .iter()
                .enumerate()
                .map(|(p, shape)| normals(200 + 10 * j as u64 + p as u64, len(shape)))
                .collect();
            let (exact, roundings) = carried_logits(case, &init, &x, n, &directions);
            let dirs: Vec<Tensor> = points
                .iter()
                .zip(&directions)
                .map(|(shape, d)| to_tensor(&dims(shape), d))
                .collect();
            let got = crate_output_tangent(case, &init, &to_tensor(&dims(input), &x), &dirs);
            assert_within_terms(
                &format!("{case} batch of {n} output tangent"),
                &got,
                &exact,
                roundings,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Chained replay: the crate's own state carried from step to step.
//
// The golden steps above each restart from the reference's state and feed Adam the
// reference's gradients, so they cannot see drift. Here the crate runs both steps on its own:
// its gradients go to its optimizers, and its state after step 1 is what step 2 starts from.
//
// How far may a parameter drift? The state after Adam is `p - lr r`, where
// `r = m_hat / (sqrt(v_hat) + eps)` is a weighted sum of the gradient history `g_1 .. g_t`
// (each with the weight decay term `wd p` added) divided by the root of a weighted sum of
// their squares. If every gradient of the crate is the reference's times `(1 + e_j)` with
// `|e_j| <= eta`, the numerator moves by at most `eta sum |a_j g_j|` and the denominator by
// at most a factor `1 + eta`, so `r` moves by at most `2 eta R_t`, where by Cauchy-Schwarz
// `R_t = sqrt(sum_j a_j^2 / w_j)` bounds `|r|` over every history (`a_j`, `w_j` the
// bias-corrected weights of the two moments). `eta` is what the golden gradient checks allow
// (`ABS + REL scale` over `|g + wd p|`); when that reaches 1 the direction is unknown and the
// two implementations may step anywhere within `lr R_t` each. A parameter therefore drifts by
// at most `lr 2 R_t min(eta, 1)` per step on top of the float32 rounding of its value, and the
// drifts of successive steps add. A parameter whose gradient is rounding noise (a bias before
// BatchNorm without weight decay to dominate it) may drift by the full `2 lr R_t`, but
// BatchNorm removes it from everything downstream except its running mean, which is bounded
// below; every other parameter moves by ~1e-7 relative, which changes the next step's
// gradients far less than the gradient tolerance.
//
// The BatchNorm buffers take in the batch statistics, which move with the parameters' drift:
// a float64 replica of the network carries a first-order bound on that movement through
// every layer (`|W| m + dW |x| + db`; BatchNorm, ReLU and pooling as their Lipschitz bounds),
// and the buffer's allowance follows the running average (momentum 0.1).

/// `R_t`: the largest `|m_hat_t| / sqrt(v_hat_t)` Adam reaches at step `t` for any gradients.
fn adam_max_step(betas: (f64, f64), t: usize) -> f64 {
    let (b1, b2) = betas;
    (1..=t)
        .map(|j| {
            let a = (1.0 - b1) * b1.powi((t - j) as i32) / (1.0 - b1.powi(t as i32));
            let w = (1.0 - b2) * b2.powi((t - j) as i32) / (1.0 - b2.powi(t as i32));
            a * a / w
        })
        .sum::<f64>()
        .sqrt()
}

/// The scale the golden checks bound a reference gradient by: `|g|`, or for FDFA's feedback
/// gradient `B - mean_i d_i u_i^T` the magnitude of its terms.
fn gradient_scale(want: &[f64], fdfa_point: Option<(&Value, usize, &[f64], usize)>) -> Vec<f64> {
    match fdfa_point {
        None => want.iter().map(|w| w.abs()).collect(),
        Some((step, point, b, n)) => {
            let d = values(&step["output_tangent"]);
            let u = values(&step["directions"][point]);
            let (c, f) = (d.len() / n, u.len() / n);
            (0..want.len())
                .map(|j| {
                    let (cls, feat) = (j / f, j % f);
                    b[j].abs()
                        + (0..n)
                            .map(|i| (d[i * c + cls] * u[i * f + feat]).abs())
                            .sum::<f64>()
                            / n as f64
                })
                .collect()
        }
    }
}

fn chained(file: &str) {
    let text = std::fs::read_to_string(format!(
        "{}/tests/golden/{file}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut model = if doc["case"] == "fc" {
        golden_fc()
    } else {
        golden_cnn()
    };
    let kind = doc["rule"].as_str().unwrap();
    let is_fdfa = kind == "FDFA";
    let mut rng = init::rng(0);
    let mut fdfa_rule = Fdfa::new(&model);
    let mut other: Box<dyn LearningRule> = match kind {
        "BP" | "FDFA" => Box::new(fdfa::rules::Bp::new()),
        "DFA" => Box::new(Dfa::new(&model, &mut rng)),
        "DKP" => Box::new(Dkp::new(&model)),
        other => panic!("unknown rule {other}"),
    };
    let rule: &mut dyn LearningRule = if is_fdfa {
        &mut fdfa_rule
    } else {
        other.as_mut()
    };
    let mut before: BTreeMap<String, Value> =
        serde_json::from_value(doc["state_init"].clone()).unwrap();
    load_state(&mut model, rule, &before);
    let settings = |which: &str| {
        let v = &doc["optimizer"][which];
        let f = |key: &str| v[key].as_f64().unwrap();
        (
            f("lr"),
            f("weight_decay"),
            (
                v["betas"][0].as_f64().unwrap(),
                v["betas"][1].as_f64().unwrap(),
            ),
        )
    };
    let (forward, feedback) = (settings("forward"), settings("feedback"));
    let mut forward_opt = adam(&doc["optimizer"]["forward"]);
    let mut feedback_opt = adam(&doc["optimizer"]["feedback"]);
    // Per parameter element: the largest relative gradient error so far, and the drift.
    let mut eta: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut drift: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Per BatchNorm buffer element: how far it may have moved with the parameters' drift.
    let mut buffers: BTreeMap<String, Vec<f64>> = BTreeMap::new();

    for (k, step) in doc["steps"].as_array().unwrap().iter().enumerate() {
        let t = k + 1;
        let what = format!("{file} chained step {k}");
        let x = tensor(&step["x"]);
        let n = x.batch();
        let targets: Vec<usize> = step["target"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        if is_fdfa {
            let directions: Vec<Tensor> = step["directions"]
                .as_array()
                .unwrap()
                .iter()
                .map(tensor)
                .collect();
            fdfa_rule
                .step_with_directions(&mut model, &x, &targets, &directions)
                .unwrap();
        } else {
            other.step(&mut model, &x, &targets, &mut rng).unwrap();
        }
        let rule: &mut dyn LearningRule = if is_fdfa {
            &mut fdfa_rule
        } else {
            other.as_mut()
        };
        // The running statistics take in this step's batch statistics, which move with the
        // drift the parameters carry into this step (momentum 0.1, PyTorch's default).
        let points: &[usize] = if doc["case"] == "fc" {
            &[5, 4]
        } else {
            &[3 * 8 * 8, 16, 5]
        };
        let zero: Vec<Vec<f64>> = points.iter().map(|&d| vec![0.0; n * d]).collect();
        let mut replica = Replica {
            state: &before,
            drift: &drift,
            bound: Bound::Perturbation,
            running: BTreeMap::new(),
        };
        replica.logits(doc["case"].as_str().unwrap(), &values(&step["x"]), n, &zero);
        for (name, moved) in replica.running {
            let old = buffers
                .entry(name)
                .or_insert_with(|| vec![0.0; moved.len()]);
            for (o, m) in old.iter_mut().zip(moved) {
                *o = 0.9 * *o + 0.1 * m;
            }
        }
        // The drift this step may add, from the reference's gradients and state.
        let grads: BTreeMap<String, Value> = serde_json::from_value(step["grads"].clone()).unwrap();
        let mut feedback_names = Vec::new();
        rule.visit_learned(&mut |name, _| feedback_names.push(name.to_string()));
        for (name, g) in &grads {
            let g = values(g);
            let p = values(&before[name]);
            let point = feedback_names.iter().position(|f| f == name);
            let (lr, wd, betas) = if point.is_some() { feedback } else { forward };
            let fdfa_point = point
                .filter(|_| is_fdfa)
                .map(|i| (step, i, p.as_slice(), n));
            let scale = gradient_scale(&g, fdfa_point);
            let r = adam_max_step(betas, t);
            let eta = eta
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; g.len()]);
            let drift = drift
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; g.len()]);
            for j in 0..g.len() {
                let effective = (g[j] + wd * p[j]).abs();
                eta[j] = eta[j].max(((ABS + REL * scale[j]) / effective).min(1.0));
                drift[j] += lr * 2.0 * r * eta[j];
            }
        }
        feedback_opt.step(&mut Learned(rule)).unwrap();
        forward_opt.step(&mut model as &mut dyn Parameters).unwrap();
        let after: BTreeMap<String, Value> =
            serde_json::from_value(step["state_after"].clone()).unwrap();
        let compare = |name: &str, got: &[f32]| {
            let want = values(&after[name]);
            let zero = vec![0.0; want.len()];
            let d = drift.get(name).or(buffers.get(name)).unwrap_or(&zero);
            let mut worst = (0.0f64, 0usize);
            for (j, (&g, &w)) in got.iter().zip(&want).enumerate() {
                let excess = (g as f64 - w).abs() / (ABS + REL * w.abs() + d[j]);
                if excess > worst.0 {
                    worst = (excess, j);
                }
            }
            let j = worst.1;
            if std::env::var("GOLDEN_DEBUG").is_ok() {
                eprintln!("{what} {name}: worst excess {:.3} at {j}", worst.0);
            }
            assert!(
                worst.0 <= 1.0,
                "{what} {name}: element {j} is {} but the reference has {} (tolerance {ABS} + \
                 {REL} * |ref| + drift {})",
                got[j],
                want[j],
                d[j]
            );
        };
        model.visit_state(&mut |name, s| match s {
            State::Param(p) => compare(name, p.value().data()),
            State::Buffer(b) => compare(name, b.data()),
            State::Counter(c) => assert_eq!(c as f64, values(&after[name])[0], "{what} {name}"),
        });
        if let Some(fb) = rule.feedback() {
            for (name, m) in fb.names().iter().zip(fb.matrices()) {
                compare(name, m.value.data());
            }
        }
        before = after;
    }
}

#[test]
fn adam_max_step_hand_checked() {
    // Step 1: m_hat / sqrt(v_hat) = g / |g|.
    assert!((adam_max_step((0.9, 0.999), 1) - 1.0).abs() < 1e-15);
    // Step 2: a = (0.09, 0.1) / 0.19, w = (0.000999, 0.001) / 0.001999.
    let a: [f64; 2] = [0.09 / 0.19, 0.1 / 0.19];
    let w: [f64; 2] = [0.000999 / 0.001999, 0.001 / 0.001999];
    let r2: f64 = (a[0] * a[0] / w[0] + a[1] * a[1] / w[1]).sqrt();
    assert!((adam_max_step((0.9, 0.999), 2) - r2).abs() < 1e-12);
    // Attained by gradients proportional to a_j / w_j.
    let g = [a[0] / w[0], a[1] / w[1]];
    let m_hat = a[0] * g[0] + a[1] * g[1];
    let v_hat = w[0] * g[0] * g[0] + w[1] * g[1] * g[1];
    assert!((m_hat / v_hat.sqrt() - r2).abs() < 1e-12);
}

macro_rules! chained {
    ($($name:ident => $file:literal),* $(,)?) => {
        $(#[test] fn $name() { chained($file); })*
    };
}

chained! {
    chained_fc_bp => "fc_bp.json",
    chained_fc_dfa => "fc_dfa.json",
    chained_fc_dkp => "fc_dkp.json",
    chained_fc_fdfa => "fc_fdfa.json",
    chained_cnn_bp => "cnn_bp.json",
    chained_cnn_dfa => "cnn_dfa.json",
    chained_cnn_dkp => "cnn_dkp.json",
    chained_cnn_fdfa => "cnn_fdfa.json",
}
