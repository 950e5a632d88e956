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
