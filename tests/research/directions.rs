//! Several directions per sample: the dual tensor carries `k` tangents stacked along the
//! batch axis. One direction is the default exactly; `k` stacked directions give the mean of
//! `k` single-direction steps; and the spread of FDFA's feedback estimate falls as `1/k`.

use fdfa::Tensor;
use fdfa::diagnostics::{MeasureConfig, measure};
use fdfa::init::rng;
use fdfa::model::{Model, fc};
use fdfa::rules::{Fdfa, ForwardGradientActivity, LearningRule, RuleKind};
use fdfa::{Result, init::Rng};

use super::{grads, normal};

/// FC-2 with BatchNorm on 2x3x3 inputs, 10 wide, 4 classes: BatchNorm couples the samples,
/// so stacking tangents is exercised through its JVP.
fn small_fc(seed: u64) -> Result<Model> {
    fc(&[2, 3, 3], 2, 10, 4, &mut rng(seed))
}

fn batch(n: usize, r: &mut Rng) -> (Tensor, Vec<usize>) {
    (
        normal(&[n, 2, 3, 3], r),
        (0..n).map(|i| (i * 7) % 4).collect(),
    )
}

/// Every feedback matrix's gradient, concatenated.
fn feedback_grads(rule: &mut dyn LearningRule) -> Vec<f64> {
    let mut out = Vec::new();
    rule.visit_learned(&mut |_, p| out.extend(p.grad().data().iter().map(|&v| f64::from(v))));
    out
}

/// Sets every feedback matrix to small random values so that the hidden blocks get a signal.
fn randomise_feedback(rule: &mut dyn LearningRule, r: &mut Rng) {
    rule.visit_learned(&mut |_, mut p| {
        let t = normal(&p.shape(), r);
        p.set_value(&t).unwrap();
    });
}

#[test]
fn one_direction_is_the_default_exactly() -> Result<()> {
    for kind in [RuleKind::Fdfa, RuleKind::Fga] {
        let mut results = Vec::new();
        for explicit in [false, true] {
            let mut model = small_fc(1)?;
            let mut rule: Box<dyn LearningRule> = match (kind, explicit) {
                (RuleKind::Fdfa, false) => Box::new(Fdfa::new(&model)),
                (RuleKind::Fdfa, true) => Box::new(Fdfa::new(&model).with_directions(1)),
                (_, false) => Box::new(ForwardGradientActivity::new()),
                (_, true) => kind.build(&model, 1, &mut rng(0))?,
            };
            randomise_feedback(rule.as_mut(), &mut rng(5));
            let mut r = rng(7);
            let (x, t) = batch(6, &mut r);
            let loss = rule.step(&mut model, &x, &t, &mut r)?.loss;
            results.push((loss, grads(&mut model), feedback_grads(rule.as_mut())));
        }
        assert_eq!(
            results[0], results[1],
            "{kind}: K = 1 differs from the default"
        );
    }
    Ok(())
}

/// Directions `[u_1; u_2]` stacked along the batch axis (`k = 2`).
fn stack(a: &[Tensor], b: &[Tensor]) -> Result<Vec<Tensor>> {
    a.iter()
        .zip(b)
        .map(|(a, b)| {
            let mut shape = a.shape().to_vec();
            shape[0] *= 2;
            Tensor::from_vec(&shape, [a.data(), b.data()].concat())
        })
        .collect()
}

fn directions(model: &Model, n: usize, r: &mut Rng) -> Vec<Tensor> {
    model
        .feedback_points()
        .iter()
        .map(|p| {
            let mut shape = vec![n];
            shape.extend_from_slice(&p.shape);
            normal(&shape, r)
        })
        .collect()
}

fn assert_close(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * scale + 1e-7,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}

#[test]
fn stacked_directions_average_single_direction_steps() -> Result<()> {
    let n = 5;
    let mut r = rng(11);
    let (x, t) = batch(n, &mut r);
    let mut model = small_fc(2)?;
    let (u1, u2) = (directions(&model, n, &mut r), directions(&model, n, &mut r));
    let both = stack(&u1, &u2)?;

    // FDFA: the forward gradients use B only; the feedback gradient B - mean(d u^T) over the
    // 2N tangents is the mean of the two single-direction ones.
    let mut fdfa = Fdfa::new(&model);
    randomise_feedback(&mut fdfa, &mut r);
    let mut single = Vec::new();
    for u in [&u1, &u2] {
        fdfa.step_with_directions(&mut model, &x, &t, u)?;
        single.push((grads(&mut model), feedback_grads(&mut fdfa)));
    }
    fdfa.step_with_directions(&mut model, &x, &t, &both)?;
    assert_eq!(grads(&mut model), single[0].0);
    let mean: Vec<f64> = single[0]
        .1
        .iter()
        .zip(&single[1].1)
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    assert_close("FDFA feedback gradient", &feedback_grads(&mut fdfa), &mean);

    // FG-A: every gradient is linear in the delivered signal, the mean over the k tangents.
    let mut fga = ForwardGradientActivity::new();
    let mut single = Vec::new();
    for u in [&u1, &u2] {
        fga.step_with_directions(&mut model, &x, &t, u)?;
        single.push(grads(&mut model));
    }
    fga.step_with_directions(&mut model, &x, &t, &both)?;
    let mean: Vec<f64> = single[0]
        .iter()
        .zip(&single[1])
        .map(|(a, b)| (a + b) / 2.0)
        .collect();
    assert_close("FG-A gradients", &grads(&mut model), &mean);
    Ok(())
}

#[test]
fn fdfa_feedback_variance_falls_as_one_over_k() -> Result<()> {
    let mut r = rng(13);
    let (x, t) = batch(8, &mut r);
    let mut variances = Vec::new();
    for k in [1, 4, 16] {
        let mut model = small_fc(3)?;
        let mut rule = Fdfa::new(&model).with_directions(k);
        let config = MeasureConfig {
            repeats: 300,
            jacobian_samples: Some(1),
        };
        let layers = measure(&mut model, &mut rule, &x, &t, &mut rng(17), &config)?;
        let total: f64 = layers.iter().filter_map(|l| l.feedback_variance).sum();
        eprintln!("K = {k}: total variance of the feedback estimate {total:.4}");
        variances.push(total);
    }
    for (i, k) in [(1, 4.0), (2, 16.0)] {
        let ratio = variances[0] / variances[i];
        assert!(
            (ratio / k - 1.0).abs() < 0.2,
            "variance(K = 1) / variance(K = {k}) = {ratio}"
        );
    }
    Ok(())
}
