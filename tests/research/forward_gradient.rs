//! The forward-gradient baselines are unbiased, and their variance grows with the dimension
//! of the perturbed space as theory says: for `v ~ N(0, I_P)` and the estimate
//! `g_hat = (g . v) v`, `E g_hat = g` and `E |g_hat|^2 = (P + 2) |g|^2`, so the total variance
//! is `(P + 1) |g|^2`.

use fdfa::Result;
use fdfa::diagnostics::{MeasureConfig, measure};
use fdfa::init::rng;
use fdfa::loss::cross_entropy;
use fdfa::model::{Block, Model};
use fdfa::rules::{Bp, ForwardGradientActivity, ForwardGradientWeight, LearningRule};

use super::{Spread, cosine, grads, grads_of, linear, norm2, normal, relu};

/// `d_in -> hidden (ReLU) -> classes`, no BatchNorm.
fn mlp(d_in: usize, hidden: usize, classes: usize, seed: u64) -> Result<Model> {
    let mut r = rng(seed);
    Model::new(
        &[d_in],
        vec![
            Block::hidden(
                "p0",
                vec![linear("fc0", d_in, hidden, &mut r)?, relu("relu0")],
            ),
            Block::output(vec![linear("out", hidden, classes, &mut r)?]),
        ],
    )
}

/// Mean and spread of FG-W's estimate over `draws` directions, against BP's gradient.
fn fgw_statistics(d_in: usize, hidden: usize, draws: usize) -> Result<(usize, f64, f64)> {
    let mut model = mlp(d_in, hidden, 3, 1)?;
    let p = model.param_count();
    let mut r = rng(2);
    let x = normal(&[4, d_in], &mut r);
    let targets = [0, 1, 2, 1];
    Bp::new().step(&mut model, &x, &targets, &mut r)?;
    let bp = grads(&mut model);
    let mut rule = ForwardGradientWeight::new();
    let mut spread = Spread::default();
    for _ in 0..draws {
        rule.step(&mut model, &x, &targets, &mut r)?;
        spread.push(&grads(&mut model));
    }
    let cos = cosine(spread.mean(), &bp);
    let ratio = spread.variance() / norm2(&bp);
    Ok((p, cos, ratio))
}

#[test]
fn fgw_is_unbiased_and_its_variance_grows_with_the_parameter_count() -> Result<()> {
    let mut ratios = Vec::new();
    for (d_in, hidden) in [(4, 4), (8, 16)] {
        let (p, cos, ratio) = fgw_statistics(d_in, hidden, 4000)?;
        let want = (p + 1) as f64;
        eprintln!(
            "FG-W, P = {p}: mean cosine {cos:.4}, variance / |g|^2 = {ratio:.1} (theory {want})"
        );
        assert!(cos > 0.95, "P = {p}: mean estimate's cosine with BP {cos}");
        assert!(
            (ratio / want - 1.0).abs() < 0.1,
            "P = {p}: variance / |g|^2 = {ratio}, theory {want}"
        );
        ratios.push(ratio);
    }
    assert!(ratios[1] > 4.0 * ratios[0]);
    Ok(())
}

/// `d_in -> Linear -> [point p0] -> ReLU, Linear -> [point p1] -> ReLU, Linear -> classes`:
/// each hidden block ends in its linear layer, so its bias gradient is exactly the sum over
/// samples of the signal FG-A delivers at the point.
fn activity_net(d_in: usize, width: usize, classes: usize, seed: u64) -> Result<Model> {
    let mut r = rng(seed);
    Model::new(
        &[d_in],
        vec![
            Block::hidden("p0", vec![linear("fc0", d_in, width, &mut r)?]),
            Block::hidden(
                "p1",
                vec![relu("relu0"), linear("fc1", width, width, &mut r)?],
            ),
            Block::output(vec![relu("relu1"), linear("out", width, classes, &mut r)?]),
        ],
    )
}

fn is_hidden(name: &str) -> bool {
    name.starts_with("fc0.") || name.starts_with("fc1.")
}

fn is_hidden_bias(name: &str) -> bool {
    name == "fc0.bias" || name == "fc1.bias"
}

/// FG-A's activity estimate (the hidden biases' gradients) over `draws` directions: the
/// cosine of the mean hidden gradient with BP's, and the total variance of the activity
/// estimate over `sum_i |a_i|^2` (the per-sample true activity gradients).
fn fga_statistics(width: usize, draws: usize) -> Result<(usize, f64, f64)> {
    let n = 3;
    let mut model = activity_net(5, width, 3, 3)?;
    let activity = model
        .feedback_points()
        .iter()
        .map(|p| p.features())
        .sum::<usize>();
    let mut r = rng(4);
    let x = normal(&[n, 5], &mut r);
    let targets = [2, 0, 1];
    Bp::new().step(&mut model, &x, &targets, &mut r)?;
    let bp = grads_of(&mut model, &is_hidden);
    // Per-sample true activity gradients a_i = (dL/dh_{0,i}, dL/dh_{1,i}).
    let mut logits_grad = fdfa::Tensor::default();
    cross_entropy(model.output()?.primal(), &targets, &mut logits_grad)?;
    let mut per_sample = 0.0;
    // Backpropagation block by block: the input gradient of block `b` is that of h_{b-1}.
    let mut g = logits_grad;
    for b in (1..model.blocks().len()).rev() {
        g = model.backward_block(b, &g, true)?.unwrap().clone();
        per_sample += g.data().iter().map(|&v| f64::from(v).powi(2)).sum::<f64>();
    }
    let mut rule = ForwardGradientActivity::new();
    let (mut mean, mut spread) = (Spread::default(), Spread::default());
    for _ in 0..draws {
        rule.step(&mut model, &x, &targets, &mut r)?;
        mean.push(&grads_of(&mut model, &is_hidden));
        spread.push(&grads_of(&mut model, &is_hidden_bias));
    }
    Ok((
        activity,
        cosine(mean.mean(), &bp),
        spread.variance() / per_sample,
    ))
}

#[test]
fn fga_is_unbiased_and_its_variance_grows_with_the_activity_dimension() -> Result<()> {
    let mut ratios = Vec::new();
    for width in [4, 16] {
        let (a, cos, ratio) = fga_statistics(width, 4000)?;
        let want = (a + 1) as f64;
        eprintln!(
            "FG-A, A = {a}: mean cosine {cos:.4}, variance / sum |a_i|^2 = {ratio:.1} (theory {want})"
        );
        assert!(cos > 0.95, "A = {a}: mean estimate's cosine with BP {cos}");
        assert!(
            (ratio / want - 1.0).abs() < 0.1,
            "A = {a}: variance / sum |a_i|^2 = {ratio}, theory {want}"
        );
        ratios.push(ratio);
    }
    assert!(ratios[1] > 3.0 * ratios[0]);
    Ok(())
}

/// The diagnostics' relative variance of FG-W's estimate of one weight `W`: each element's
/// variance is `|g|^2 + g_e^2`, so the total over `W` relative to `|g_W|^2` is
/// `|W| |g|^2 / |g_W|^2 + 1`, with `g` the gradient of all parameters.
#[test]
fn measured_relative_variance_of_fgw_matches_theory() -> Result<()> {
    let mut model = mlp(6, 8, 3, 5)?;
    let mut r = rng(6);
    let x = normal(&[4, 6], &mut r);
    let targets = [0, 1, 2, 1];
    Bp::new().step(&mut model, &x, &targets, &mut r)?;
    let all = norm2(&grads(&mut model));
    let main = grads_of(&mut model, &|name| name == "fc0.weight");
    let want = main.len() as f64 * all / norm2(&main) + 1.0;
    let config = MeasureConfig {
        repeats: 3000,
        jacobian_samples: None,
    };
    let mut rule = ForwardGradientWeight::new();
    let layers = measure(&mut model, &mut rule, &x, &targets, &mut r, &config)?;
    let got = layers[0].relative_variance;
    eprintln!("FG-W relative variance of fc0.weight: {got:.1} (theory {want:.1})");
    assert_eq!(layers[0].weight, "fc0.weight");
    assert!((got / want - 1.0).abs() < 0.15, "{got} vs {want}");
    Ok(())
}
