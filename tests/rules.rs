//! The learning rules: exact signals and feedback updates on small hand-checked networks,
//! FDFA's tangent against finite differences, feedback alignment, learning on a synthetic
//! task, Adam, and thread-count independence.

use std::sync::{Arc, Mutex};

use fdfa::layers::{BatchNormConfig, Layer, LinearConfig, Relu, State, StateMut};
use fdfa::loss::cross_entropy;
use fdfa::model::{Block, Model};
use fdfa::optim::{AdamConfig, Parameters};
use fdfa::rules::{Bp, Dfa, Dkp, Fdfa, Learned, LearningRule, RuleKind};
use fdfa::{Dual, Result, Tensor, init};

mod common;

use common::models::{boxed, plain_fc, small_cnn};
use common::{dot, randn};

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    dot(a, b) / (dot(a, a).sqrt() * dot(b, b).sqrt())
}

/// An identity layer that records the gradient arriving at it in backward: placed at the end
/// of a hidden block, it shows the signal `g_l` a rule delivers.
#[derive(Debug, Clone)]
struct Probe(Arc<Mutex<Tensor>>);

impl Layer for Probe {
    fn name(&self) -> &str {
        "probe"
    }
    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>> {
        Ok(input.to_vec())
    }
    fn forward(&mut self, input: &Dual, output: &mut Dual) -> Result<()> {
        output.resize(input.primal().shape(), input.directions());
        let (y, dy) = output.parts_mut();
        y.data_mut().copy_from_slice(input.primal().data());
        if let (Some(dy), Some(dx)) = (dy, input.tangent()) {
            dy.data_mut().copy_from_slice(dx.data());
        }
        Ok(())
    }
    fn infer(&self, input: &Tensor, output: &mut Tensor) -> Result<()> {
        output.assign(input);
        Ok(())
    }
    fn backward(
        &mut self,
        _: &Tensor,
        _: &Tensor,
        grad_output: &Tensor,
        grad_input: Option<&mut Tensor>,
    ) -> Result<()> {
        *self.0.lock().unwrap() = grad_output.clone();
        if let Some(g) = grad_input {
            g.assign(grad_output);
        }
        Ok(())
    }
}

/// FC 4 -> 3 (BN, ReLU, probe) -> 3 (BN, ReLU, probe) -> 2 classes.
fn probed_fc(probes: &[Arc<Mutex<Tensor>>; 2]) -> Model {
    let mut rng = init::rng(3);
    let mut hidden = |i: usize, d_in: usize| {
        Block::hidden(
            format!("fc_dfa.{i}"),
            vec![
                boxed(
                    LinearConfig::new(d_in, 3)
                        .with_name(format!("fc_hidden.{i}"))
                        .init(&mut rng)
                        .unwrap(),
                ),
                boxed(
                    BatchNormConfig::d1(3)
                        .with_name(format!("bn_hidden.{i}"))
                        .init()
                        .unwrap(),
                ),
                boxed(Relu::new("relu")),
                boxed(Probe(probes[i].clone())),
            ],
        )
    };
    let blocks = vec![
        hidden(0, 4),
        hidden(1, 3),
        Block::output(vec![boxed(
            LinearConfig::new(3, 2)
                .with_name("fc_out")
                .init(&mut init::rng(4))
                .unwrap(),
        )]),
    ];
    Model::new(&[4], blocks).unwrap()
}

/// Sets every feedback matrix to small hand-chosen integers.
fn hand_set_feedback(rule: &mut dyn LearningRule) {
    let fb = rule.feedback_mut().unwrap();
    for l in 0..fb.len() {
        let mut b = fb.matrices()[l].value.clone();
        for (j, v) in b.data_mut().iter_mut().enumerate() {
            *v = ((j + 2 * l) % 5) as f32 - 2.0;
        }
        fb.set(l, &b).unwrap();
    }
}

/// `e B_l` and `e^T h_l` computed here, element by element, in f64.
fn e_times(e: &Tensor, b: &Tensor) -> Vec<f64> {
    let (n, c, d) = (e.batch(), e.row_len(), b.row_len());
    (0..n * d)
        .map(|k| {
            (0..c)
                .map(|j| e.row(k / d)[j] as f64 * b.row(j)[k % d] as f64)
                .sum()
        })
        .collect()
}

fn assert_exact(what: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
            "{what}[{i}]: {g} != {w}"
        );
    }
}

#[test]
fn dfa_and_dkp_deliver_e_b_and_dkp_learns_e_transpose_h() {
    let x = Tensor::from_vec(
        &[3, 4],
        vec![1., -2., 0.5, 3., 0., 1., -1., 2., 2., 2., -3., 1.],
    )
    .unwrap();
    let targets = [1, 0, 1];
    for kind in [RuleKind::Dfa, RuleKind::Dkp] {
        let probes = [
            Arc::new(Mutex::new(Tensor::default())),
            Arc::new(Mutex::new(Tensor::default())),
        ];
        let mut model = probed_fc(&probes);
        let mut rule = kind.build(&model, 1, &mut init::rng(0)).unwrap();
        hand_set_feedback(rule.as_mut());
        rule.step(&mut model, &x, &targets, &mut init::rng(0))
            .unwrap();
        let mut e = Tensor::default();
        cross_entropy(model.output().unwrap().primal(), &targets, &mut e).unwrap();
        let fb = rule.feedback().unwrap().clone();
        for (l, probe) in probes.iter().enumerate() {
            let signal = probe.lock().unwrap().clone();
            assert_exact(
                &format!("{kind} signal {l}"),
                signal.data(),
                &e_times(&e, &fb.matrices()[l].value),
            );
            if kind == RuleKind::Dkp {
                let h = model.hidden(l).primal();
                let want: Vec<f64> = (0..2 * 3)
                    .map(|k| {
                        (0..3)
                            .map(|i| e.row(i)[k / 3] as f64 * h.row(i)[k % 3] as f64)
                            .sum()
                    })
                    .collect();
                assert_exact(
                    &format!("DKP feedback grad {l}"),
                    fb.matrices()[l].grad.data(),
                    &want,
                );
            }
        }
    }
}

fn loss_of(model: &mut Model, x: &Tensor, targets: &[usize]) -> f64 {
    let logits = model
        .forward_train(x, &mut |_, _| Ok(()))
        .unwrap()
        .primal()
        .clone();
    let mut e = Tensor::default();
    cross_entropy(&logits, targets, &mut e).unwrap() as f64
}

#[test]
fn bp_gradients_of_a_whole_network_match_finite_differences() {
    let mut model = small_cnn(5);
    let x = randn(&[4, 2, 6, 6], 6);
    let targets = [0, 2, 1, 2];
    Bp::new()
        .step(&mut model, &x, &targets, &mut init::rng(0))
        .unwrap();
    let mut grads = Vec::new();
    model.visit_state(&mut |name, s| {
        if let State::Param(p) = s {
            grads.push((name.to_string(), p.grad().into_owned()));
        }
    });
    for (t, (name, grad)) in grads.iter().enumerate() {
        // Directional derivative along a random direction r: <grad, r> against
        // (L(w + h r) - L(w - h r)) / 2h, in f64 sums over f32 evaluations.
        // A unit direction and a small step, so that no ReLU kink or max-pool choice is
        // crossed between the two evaluations.
        let mut r = randn(grad.shape(), 100 + t as u64);
        let norm = dot(r.data(), r.data()).sqrt() as f32;
        r.data_mut().iter_mut().for_each(|v| *v /= norm);
        let h = 1e-3f32;
        let shift = |model: &mut Model, s: f32| {
            model.visit_state_mut(&mut |n, state| {
                if let (true, StateMut::Param(mut p)) = (n == name, state) {
                    let mut v = p.value().into_owned();
                    v.data_mut()
                        .iter_mut()
                        .zip(r.data())
                        .for_each(|(w, d)| *w += s * d);
                    p.set_value(&v).unwrap();
                }
            })
        };
        shift(&mut model, h);
        let up = loss_of(&mut model, &x, &targets);
        shift(&mut model, -2.0 * h);
        let down = loss_of(&mut model, &x, &targets);
        shift(&mut model, h);
        let fd = (up - down) / (2.0 * h as f64);
        let analytic = dot(grad.data(), r.data());
        let err = (fd - analytic).abs() / (fd.abs().max(analytic.abs()).max(1e-2));
        assert!(
            err < 1e-2,
            "{name}: backprop {analytic:.6} vs finite difference {fd:.6} (relative error {err:.2e})"
        );
    }
}

#[test]
fn fdfa_output_tangent_sums_the_directional_derivatives_and_feeds_back_b_minus_mean_d_u() {
    let mut model = small_cnn(7);
    let x = randn(&[4, 2, 6, 6], 8);
    let targets = [1, 0, 2, 2];
    let directions: Vec<Tensor> = model
        .feedback_points()
        .iter()
        .enumerate()
        .map(|(l, p)| {
            let mut shape = vec![4];
            shape.extend_from_slice(&p.shape);
            randn(&shape, 20 + l as u64)
        })
        .collect();
    let mut rule = Fdfa::new(&model);
    rule.feedback_mut().unwrap().visit_mut(&mut |_, mut b| {
        init::fill_normal(b.storage_mut().0, &mut init::rng(9));
    });
    rule.step_with_directions(&mut model, &x, &targets, &directions)
        .unwrap();
    let tangent = model.output().unwrap().tangent().unwrap().clone();

    // Central differences of the logits when h_l is moved along u_l, one point at a time.
    let mut fd_sum = vec![0.0f64; tangent.len()];
    // Small enough that no ReLU kink or max-pool choice is crossed.
    let h = 1e-3f32;
    for (l, u) in directions.iter().enumerate() {
        let mut logits_at = |s: f32| {
            model
                .forward_train(&x, &mut |p, act| {
                    if p == l {
                        act.primal_mut()
                            .data_mut()
                            .iter_mut()
                            .zip(u.data())
                            .for_each(|(a, d)| *a += s * d);
                    }
                    Ok(())
                })
                .unwrap()
                .primal()
                .clone()
        };
        let (up, down) = (logits_at(h), logits_at(-h));
        for (acc, (a, b)) in fd_sum.iter_mut().zip(up.data().iter().zip(down.data())) {
            *acc += (*a as f64 - *b as f64) / (2.0 * h as f64);
        }
    }
    let scale = fd_sum.iter().map(|v| v.abs()).fold(0.0, f64::max);
    for (i, (t, f)) in tangent.data().iter().zip(&fd_sum).enumerate() {
        assert!(
            (*t as f64 - f).abs() < 1e-2 * scale,
            "logit tangent {i}: JVP {t} vs finite differences {f}"
        );
    }

    for (l, (b, u)) in rule
        .feedback()
        .unwrap()
        .matrices()
        .iter()
        .zip(&directions)
        .enumerate()
    {
        let (c, d) = (tangent.row_len(), u.row_len());
        let want: Vec<f64> = (0..c * d)
            .map(|k| {
                let mean: f64 = (0..4)
                    .map(|i| tangent.row(i)[k / d] as f64 * u.row(i)[k % d] as f64)
                    .sum::<f64>()
                    / 4.0;
                b.value.data()[k] as f64 - mean
            })
            .collect();
        assert_exact(&format!("FDFA feedback grad {l}"), b.grad.data(), &want);
    }
}

/// The batch-mean Jacobian of the logits with respect to `h_l`, `[classes, D_l]`, by
/// forward mode with one stacked tangent per feature of `h_l`.
fn mean_jacobian(model: &mut Model, x: &Tensor, l: usize) -> Vec<f32> {
    let n = x.batch();
    let d = model.feedback_points()[l].features();
    let logits = model
        .forward_train(x, &mut |p, h| {
            if p == l {
                h.ensure_tangent(d);
                let t = h.tangent_mut().unwrap();
                for k in 0..d {
                    for i in 0..n {
                        t.data_mut()[(k * n + i) * d + k] += 1.0;
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let t = logits.tangent().unwrap();
    let c = t.row_len();
    let mut jac = vec![0.0f32; c * d];
    for k in 0..d {
        for i in 0..n {
            for j in 0..c {
                jac[j * d + k] += t.row(k * n + i)[j] / n as f32;
            }
        }
    }
    jac
}

#[test]
fn fdfa_feedback_aligns_with_the_mean_jacobian() {
    let mut model = plain_fc(11);
    let x = randn(&[32, 10], 12);
    let targets: Vec<usize> = (0..32).map(|i| i % 3).collect();
    let mut rule = Fdfa::new(&model);
    let mut opt = AdamConfig::default().with_lr(1e-2).init().unwrap();
    let mut rng = init::rng(13);
    // Forward parameters stay fixed so the Jacobian the feedback tracks stays fixed; a
    // smaller rate in the second half lets the running average settle.
    for step in 0..2000 {
        if step == 1000 {
            opt.set_lr(1e-3);
        }
        rule.step(&mut model, &x, &targets, &mut rng).unwrap();
        opt.step(&mut Learned(&mut rule)).unwrap();
    }
    for l in 0..2 {
        let jac = mean_jacobian(&mut model, &x, l);
        let cos = cosine(rule.feedback().unwrap().matrices()[l].value.data(), &jac);
        assert!(
            cos > 0.95,
            "feedback {l} aligns with the Jacobian at cosine {cos:.3}"
        );
    }
}

/// Three classes of 1x12x12 images: a class pattern plus noise.
fn synthetic(n: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let patterns = randn(&[3, 144], 99);
    let noise = randn(&[n, 144], seed);
    let targets: Vec<usize> = (0..n).map(|i| (i * 7 + seed as usize) % 3).collect();
    let mut x = Tensor::zeros(&[n, 1, 12, 12]);
    for (i, t) in targets.iter().enumerate() {
        for j in 0..144 {
            x.data_mut()[i * 144 + j] = patterns.row(*t)[j] + 1.5 * noise.row(i)[j];
        }
    }
    (x, targets)
}

fn accuracy(model: &mut Model, x: &Tensor, targets: &[usize]) -> f64 {
    let logits = model.infer(x).unwrap();
    let (_, correct) = fdfa::loss::evaluate(logits, targets).unwrap();
    correct as f64 / targets.len() as f64
}

#[test]
fn every_rule_learns_a_synthetic_task_with_fc2_and_the_shallow_cnn() {
    let (train_x, train_t) = synthetic(256, 1);
    let (test_x, test_t) = synthetic(256, 2);
    for conv in [false, true] {
        for kind in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
            let mut rng = init::rng(21);
            let mut model = if conv {
                fdfa::model::shallow_cnn(&[1, 12, 12], 3, &mut rng).unwrap()
            } else {
                fdfa::model::fc(&[1, 12, 12], 2, 64, 3, &mut rng).unwrap()
            };
            let mut rule = kind.build(&model, 1, &mut rng).unwrap();
            let mut fwd = AdamConfig::default().with_lr(1e-3).init().unwrap();
            let mut fb = AdamConfig::default().with_lr(1e-3).init().unwrap();
            let mut losses = Vec::new();
            for epoch in 0..8 {
                for b in 0..8 {
                    let rows = b * 32..(b + 1) * 32;
                    let x = Tensor::from_vec(
                        &[32, 1, 12, 12],
                        train_x.data()[rows.start * 144..rows.end * 144].to_vec(),
                    )
                    .unwrap();
                    let report = rule.step(&mut model, &x, &train_t[rows], &mut rng).unwrap();
                    fb.step(&mut Learned(rule.as_mut())).unwrap();
                    fwd.step(&mut model as &mut dyn Parameters).unwrap();
                    if epoch == 0 || epoch == 7 {
                        losses.push(report.loss);
                    }
                }
            }
            let first: f32 = losses[..8].iter().sum::<f32>() / 8.0;
            let last: f32 = losses[8..].iter().sum::<f32>() / 8.0;
            let acc = accuracy(&mut model, &test_x, &test_t);
            let net = if conv { "shallow CNN" } else { "FC-2" };
            assert!(
                last < 0.5 * first,
                "{kind} on {net}: loss {first:.3} -> {last:.3}"
            );
            assert!(acc >= 0.9, "{kind} on {net}: held-out accuracy {acc:.3}");
        }
    }
}

/// Two Adam steps with weight decay, against values computed by hand:
///
/// ```python
/// p, m, v = 1.0, 0.0, 0.0
/// lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
/// for t, g in [(1, 0.5), (2, -0.25)]:
///     g = g + wd * p
///     m = b1 * m + (1 - b1) * g
///     v = b2 * v + (1 - b2) * g * g
///     p -= lr / (1 - b1**t) * m / ((v / (1 - b2**t)) ** 0.5 + eps)
///     print(repr(p))
/// # 0.9900000001666667
/// # 0.9853191993058599
/// ```
#[test]
fn adam_matches_two_hand_computed_steps_with_weight_decay() {
    struct One(fdfa::layers::Param);
    impl Parameters for One {
        fn visit_params(&mut self, f: &mut dyn FnMut(&str, fdfa::layers::ParamMut<'_>)) {
            f("w", fdfa::layers::ParamMut::new(&mut self.0))
        }
    }
    let mut p = One(fdfa::layers::Param::new(
        Tensor::from_vec(&[1], vec![1.0]).unwrap(),
    ));
    let mut adam = AdamConfig::default()
        .with_lr(0.01)
        .with_weight_decay(0.1)
        .init()
        .unwrap();
    for (g, want) in [(0.5, 0.9900000001666667), (-0.25, 0.9853191993058599)] {
        p.0.grad = Tensor::from_vec(&[1], vec![g]).unwrap();
        adam.step(&mut p).unwrap();
        let got = p.0.value.data()[0] as f64;
        assert!((got - want).abs() < 1e-7, "{got} != {want}");
    }
    assert_eq!(adam.steps(), 2);
}

/// All state of a model, flattened, for bit comparisons.
fn snapshot(model: &mut Model, rule: &mut dyn LearningRule) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    model.visit_state(&mut |name, s| {
        let bits = match s {
            State::Param(p) => p.value().data().iter().map(|v| v.to_bits()).collect(),
            State::Buffer(b) => b.data().iter().map(|v| v.to_bits()).collect(),
            State::Counter(c) => vec![c as u32],
        };
        out.push((name.to_string(), bits));
    });
    rule.visit_learned(&mut |name, p| {
        out.push((
            name.to_string(),
            p.value().data().iter().map(|v| v.to_bits()).collect(),
        ))
    });
    out
}

#[test]
fn the_same_seed_gives_bit_identical_weights_with_one_and_two_threads() {
    let (x, targets) = synthetic(64, 3);
    for conv in [false, true] {
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut rng = init::rng(5);
                let mut model = if conv {
                    fdfa::model::shallow_cnn(&[1, 12, 12], 3, &mut rng).unwrap()
                } else {
                    fdfa::model::fc(&[1, 12, 12], 2, 256, 3, &mut rng).unwrap()
                };
                let mut rule = RuleKind::Fdfa.build(&model, 1, &mut rng).unwrap();
                let mut fwd = AdamConfig::default().init().unwrap();
                let mut fb = AdamConfig::default().init().unwrap();
                for _ in 0..3 {
                    rule.step(&mut model, &x, &targets, &mut rng).unwrap();
                    fb.step(&mut Learned(rule.as_mut())).unwrap();
                    fwd.step(&mut model as &mut dyn Parameters).unwrap();
                }
                snapshot(&mut model, rule.as_mut())
            })
        };
        assert_eq!(run(1), run(2), "conv = {conv}");
    }
}

#[test]
fn dfa_feedback_starts_kaiming_uniform_and_dkp_fdfa_at_zero() {
    let model = fdfa::model::fc(&[1, 28, 28], 2, 800, 10, &mut init::rng(0)).unwrap();
    let dfa = Dfa::new(&model, &mut init::rng(1));
    let b = &dfa.feedback().unwrap().matrices()[0].value;
    assert_eq!(b.shape(), &[10, 800]);
    let bound = (6.0f32 / 800.0).sqrt();
    assert!(b.data().iter().all(|v| v.abs() <= bound));
    assert!(
        b.data().iter().any(|v| v.abs() > 0.9 * bound),
        "values fill the range"
    );
    for rule in [
        Box::new(Dkp::new(&model)) as Box<dyn LearningRule>,
        Box::new(Fdfa::new(&model)),
    ] {
        assert!(
            rule.feedback().unwrap().matrices().iter().all(|m| m
                .value
                .data()
                .iter()
                .all(|&v| v == 0.0))
        );
    }
}

/// Every parameter gradient of a model, as bits.
fn grad_bits(model: &mut Model) -> Vec<(String, Vec<u32>)> {
    let mut out = Vec::new();
    model.visit_state(&mut |name, s| {
        if let State::Param(p) = s {
            out.push((
                name.to_string(),
                p.grad().data().iter().map(|v| v.to_bits()).collect(),
            ));
        }
    });
    out
}

/// The delivery trains all blocks at once (`Model::backward_local`); the gradients are those
/// of training the output block, then each feedback point, one after the other.
#[test]
fn blocks_trained_in_parallel_match_blocks_trained_one_by_one() {
    let (x, targets) = synthetic(32, 8);
    for conv in [false, true] {
        // The same model after the same forward, as often as needed.
        let fresh = || {
            let mut rng = init::rng(6);
            let mut model = if conv {
                fdfa::model::shallow_cnn(&[1, 12, 12], 3, &mut rng).unwrap()
            } else {
                fdfa::model::fc(&[1, 12, 12], 2, 256, 3, &mut rng).unwrap()
            };
            let logits = model.forward_train(&x, &mut |_, _| Ok(())).unwrap();
            let mut e = Tensor::default();
            cross_entropy(logits.primal(), &targets, &mut e).unwrap();
            (model, e)
        };
        let (mut one_by_one, e) = fresh();
        let rule = Dfa::new(&one_by_one, &mut init::rng(7));
        let feedback = rule.feedback().unwrap();
        let output = one_by_one.blocks().len() - 1;
        one_by_one.backward_block(output, &e, false).unwrap();
        let mut signal = Tensor::default();
        for l in 0..feedback.len() {
            feedback.signal(l, &one_by_one, &e, &mut signal).unwrap();
            // Block `l` ends in feedback point `l`.
            one_by_one.backward_block(l, &signal, false).unwrap();
        }
        let want = grad_bits(&mut one_by_one);
        assert!(want.iter().all(|(_, g)| g.iter().any(|&b| b != 0)));

        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let (mut together, _) = fresh();
            pool.install(|| feedback.deliver(&mut together, &e))
                .unwrap();
            assert_eq!(
                grad_bits(&mut together),
                want,
                "conv {conv}, {threads} threads"
            );
        }

        // A logits gradient of the wrong shape is an error, not a panic.
        for shape in [[32, 4], [31, 3]] {
            let (mut model, _) = fresh();
            assert!(
                feedback
                    .deliver(&mut model, &Tensor::zeros(&shape))
                    .is_err()
            );
        }
    }
}

/// Both flavours of the state visitor show the same entries, under the same names, in the
/// same order, in PyTorch's layout (a `Linear` weight `[out, in]`), and a value written in
/// that layout through the exclusive one reads back unchanged through the shared one.
#[test]
fn both_state_visitors_show_pytorch_layout() {
    for conv in [false, true] {
        let mut rng = init::rng(4);
        let mut model = if conv {
            fdfa::model::shallow_cnn(&[1, 12, 12], 3, &mut rng).unwrap()
        } else {
            fdfa::model::fc(&[1, 3, 3], 2, 5, 4, &mut rng).unwrap()
        };
        let mut shared = Vec::new();
        model.visit_state(&mut |name, s| {
            if let State::Param(p) = s {
                shared.push((name.to_string(), p.value().into_owned()));
            }
        });
        let mut written = Vec::new();
        model.visit_state_mut(&mut |name, s| {
            if let StateMut::Param(mut p) = s {
                let shape = p.shape();
                let len = shape.iter().product::<usize>();
                let v = Tensor::from_vec(&shape, (0..len).map(|i| i as f32).collect()).unwrap();
                p.set_value(&v).unwrap();
                written.push((name.to_string(), v));
            }
        });
        assert_eq!(
            shared
                .iter()
                .map(|(n, t)| (n, t.shape()))
                .collect::<Vec<_>>(),
            written
                .iter()
                .map(|(n, t)| (n, t.shape()))
                .collect::<Vec<_>>()
        );
        let mut read = Vec::new();
        model.visit_state(&mut |name, s| {
            if let State::Param(p) = s {
                read.push((name.to_string(), p.value().into_owned()));
            }
        });
        assert_eq!(read, written);
        let weight = |name: &str| {
            shared
                .iter()
                .find(|(n, _)| n == name)
                .unwrap()
                .1
                .shape()
                .to_vec()
        };
        if conv {
            assert_eq!(weight("linear_1.weight"), vec![128, 40 * 2 * 2]);
        } else {
            assert_eq!(weight("fc_hidden.0.weight"), vec![5, 9]);
        }
    }
}

/// Every backward pass before a training forward (or after inference only) is an error that
/// says so, not a panic on the empty activations.
#[test]
fn a_backward_before_any_forward_is_an_error() {
    for conv in [false, true] {
        let mut rng = init::rng(9);
        let mut model = if conv {
            fdfa::model::shallow_cnn(&[1, 12, 12], 3, &mut rng).unwrap()
        } else {
            fdfa::model::fc(&[1, 12, 12], 2, 16, 3, &mut rng).unwrap()
        };
        let (x, _) = synthetic(4, 1);
        model.infer(&x).unwrap();
        let e = Tensor::zeros(&[4, 3]);
        let h = Tensor::zeros(&[4, 16]);
        let results = [
            model.backward_local(&|_, out| {
                out.fill(1.0);
                Ok(())
            }),
            model
                .backward_block(model.blocks().len() - 1, &e, false)
                .map(|_| ()),
            model.backward_block(0, &h, false).map(|_| ()),
            model.backward_block(1, &h, true).map(|_| ()),
            model.backward(&e),
        ];
        for r in results {
            let message = r.unwrap_err().to_string();
            assert!(message.contains("call `forward` first"), "{message}");
        }
    }
}
