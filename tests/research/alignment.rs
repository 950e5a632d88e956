//! The alignment diagnostics: the Jacobian they compare feedback to, their invisibility to
//! training, and how FDFA, DKP and DFA align with backpropagation on MNIST.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::{Arc, Mutex};

use fdfa::data::{DataSource, Dataset, load_mnist};
use fdfa::diagnostics::{AlignmentProbe, LayerAlignment, MeasureConfig, batch_jacobians, measure};
use fdfa::init::rng;
use fdfa::layers::State;
use fdfa::model::{Model, fc};
use fdfa::rules::{Fdfa, LearningRule, RuleKind};
use fdfa::train::{TrainConfig, Trainer};
use fdfa::{Result, Tensor};

use super::normal;

/// `batch_jacobians` (reverse mode, one pass per sample and class) against forward mode:
/// FDFA with one one-hot direction per sample and feature at one point, zero elsewhere,
/// gives `B - grad(B) = (1/k) (1/N) sum_i dy_i / dh_{l,i}` with `k = N * D_l` tangents.
#[test]
fn batch_jacobian_matches_forward_mode_through_batch_norm() -> Result<()> {
    let (n, classes) = (4, 3);
    let mut model = fc(&[5], 2, 6, classes, &mut rng(21))?;
    let mut r = rng(22);
    let x = normal(&[n, 5], &mut r);
    let targets = [0, 2, 1, 1];
    for l in 0..2 {
        let d = model.feedback_points()[l].features();
        let k = n * d;
        let directions: Vec<Tensor> = model
            .feedback_points()
            .iter()
            .enumerate()
            .map(|(p, point)| {
                let mut u = Tensor::zeros(&[k * n, point.features()]);
                if p == l {
                    for i in 0..n {
                        for f in 0..d {
                            let t = i * d + f; // tangent t perturbs feature f of sample i
                            u.data_mut()[(t * n + i) * d + f] = 1.0;
                        }
                    }
                }
                u
            })
            .collect();
        let mut rule = Fdfa::new(&model);
        rule.step_with_directions(&mut model, &x, &targets, &directions)?;
        let forward: Vec<f32> = rule.feedback().map_or(vec![], |f| {
            f.matrices()[l]
                .grad
                .data()
                .iter()
                .map(|g| -g * k as f32)
                .collect()
        });
        let reverse = batch_jacobians(&mut model, None)?;
        let scale = forward.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(scale > 1e-3);
        for (a, b) in reverse[l].data().iter().zip(&forward) {
            assert!((a - b).abs() < 1e-4 * scale, "point {l}: {a} vs {b}");
        }
    }

    // Why one pass per sample: a cotangent on every sample at once measures the response to a
    // shift common to the whole batch, which the next block's BatchNorm removes exactly.
    let mut cotangent = Tensor::zeros(&[n, classes]);
    for i in 0..n {
        cotangent.data_mut()[i * classes] = 1.0 / n as f32;
    }
    // Backpropagation from the logits down to h_0, the input of block 1.
    let mut g = cotangent;
    for b in (1..model.blocks().len()).rev() {
        g = model.backward_block(b, &g, true)?.unwrap().clone();
    }
    let common = g.data().to_vec();
    let d = model.feedback_points()[0].features();
    let column_sum: f32 = (0..d)
        .map(|f| (0..n).map(|i| common[i * d + f]).sum::<f32>().abs())
        .sum();
    let row_norm: f32 = common.iter().map(|v| v.abs()).sum();
    assert!(
        column_sum < 1e-5 * row_norm.max(1.0),
        "{column_sum} vs {row_norm}"
    );
    Ok(())
}

/// Parameters, buffers and counters of a model, and the rule's feedback, as plain values.
fn state(model: &mut Model, rule: &mut dyn LearningRule) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    model.visit_state(&mut |_, s| match s {
        State::Param(p) => {
            out.push(p.value().data().to_vec());
            out.push(p.grad().data().to_vec());
        }
        State::Buffer(t) => out.push(t.data().to_vec()),
        State::Counter(c) => out.push(vec![c as f32]),
    });
    rule.visit_learned(&mut |_, p| {
        out.push(p.value().data().to_vec());
        out.push(p.grad().data().to_vec());
    });
    out
}

#[test]
fn measuring_does_not_change_training() -> Result<()> {
    let samples = 40;
    let pixels: Vec<u8> = (0..samples * 18)
        .map(|i| ((i * 97 + 13) % 256) as u8)
        .collect();
    let labels: Vec<u32> = (0..samples).map(|i| (i * 5 % 4) as u32).collect();
    let data = Dataset::new(pixels, labels, [2, 3, 3], 4)?;
    let mut runs = Vec::new();
    for kind in [RuleKind::Fdfa, RuleKind::Fga] {
        for probe in [false, true] {
            let mut r = rng(3);
            let model = fc(&[2, 3, 3], 2, 10, 4, &mut r)?;
            let rule = kind.build(&model, 2, &mut r)?;
            let config = TrainConfig::default().with_batch_size(8).with_epochs(2);
            let mut trainer = Trainer::new(model, rule, config)?;
            let measured = Arc::new(Mutex::new(AlignmentProbe::new(
                2,
                MeasureConfig::default(),
            )?));
            if probe {
                let hook = measured.clone();
                trainer.set_before_step(Some(Box::new(move |mut step| {
                    let position = (step.epoch, step.batch, step.batches);
                    let mut probe = hook.lock().unwrap();
                    probe.observe(
                        step.model,
                        step.rule,
                        step.x,
                        step.targets,
                        position,
                        &mut step.rng,
                    )
                })));
            }
            let records = trainer.fit(&data, &data, &mut |_| ControlFlow::Continue(()))?;
            let rows = measured.lock().unwrap().take_rows();
            let (model, rule) = trainer.parts_mut();
            let end = state(model, rule);
            runs.push((records, end, trainer.progress().clone(), rows));
        }
        let (with, without) = (runs.pop(), runs.pop());
        let (Some(with), Some(without)) = (with, without) else {
            unreachable!()
        };
        assert_eq!(with.0, without.0, "{kind}: epoch records");
        assert_eq!(with.1, without.1, "{kind}: model and feedback state");
        assert_eq!(with.2, without.2, "{kind}: progress and generator");
        assert!(without.3.is_empty());
        // 5 batches per epoch, measured before batches 2 and 4, at 2 hidden blocks.
        assert_eq!(with.3.len(), 2 * 2 * 2, "{kind}: alignment rows");
        assert_eq!((with.3[0].epoch, with.3[0].batch), (1, 2));
        // FDFA's weight updates are deterministic given B; its feedback estimate is random.
        let random = |a: &LayerAlignment| match kind {
            RuleKind::Fdfa => a.variance == 0.0 && a.feedback_variance.is_some_and(|v| v > 0.0),
            _ => a.variance > 0.0 && a.feedback_variance.is_none(),
        };
        assert!(with.3.iter().all(|r| random(&r.alignment)), "{kind}");
    }
    Ok(())
}

/// Trains FC-2 on the first `samples` MNIST training images for one epoch with `kind` and
/// the reference's defaults, then measures on the first 4 test batches of 64.
fn mnist_alignment(kind: RuleKind, samples: usize) -> Result<Vec<LayerAlignment>> {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/data/mnist"));
    let (train, test) = load_mnist(dir)?;
    let train = train.subset(0..samples)?;
    let mut r = rng(1);
    let model = fc(&[1, 28, 28], 2, 800, 10, &mut r)?;
    let rule = kind.build(&model, 1, &mut r)?;
    let config = TrainConfig::default().with_epochs(1);
    let mut trainer = Trainer::new(model, rule, config)?;
    trainer.train_epoch(&train, &mut |_| ControlFlow::Continue(()))?;
    let config = MeasureConfig {
        repeats: 1,
        jacobian_samples: Some(16),
    };
    let mut mean: Vec<LayerAlignment> = Vec::new();
    let batches = 4;
    for b in 0..batches {
        let indices: Vec<usize> = (b * 64..(b + 1) * 64).collect();
        let mut x = Tensor::zeros(&[64, 1, 28, 28]);
        let mut targets = vec![0; 64];
        test.fill_batch(&indices, 0, x.data_mut(), &mut targets)?;
        let (model, rule) = trainer.parts_mut();
        let layers = measure(model, rule, &x, &targets, &mut rng(99), &config)?;
        if mean.is_empty() {
            mean = layers.iter().map(|l| scaled(l, 0.0)).collect();
        }
        for (m, l) in mean.iter_mut().zip(&layers) {
            m.update_cosine += l.update_cosine / batches as f64;
            m.block_cosine += l.block_cosine / batches as f64;
            m.feedback_cosine = Some(
                m.feedback_cosine.unwrap_or(0.0)
                    + l.feedback_cosine.unwrap_or(0.0) / batches as f64,
            );
        }
    }
    Ok(mean)
}

fn scaled(l: &LayerAlignment, s: f64) -> LayerAlignment {
    LayerAlignment {
        update_cosine: l.update_cosine * s,
        block_cosine: l.block_cosine * s,
        feedback_cosine: l.feedback_cosine.map(|c| c * s),
        ..l.clone()
    }
}

/// After one epoch on 20,000 MNIST samples (a third of the epoch, to keep the test short),
/// FDFA's hidden-layer updates align with BP's much better than DKP's, which align better
/// than DFA's. Seeds 1, 2 and 3 of this protocol gave update cosines (layer 0, layer 1) of
/// FDFA 0.82-0.83/0.96, DKP 0.64-0.66/0.49-0.52, DFA 0.40-0.42/0.41-0.43; after the full
/// epoch (seed 1) FDFA 0.88/0.98, DKP 0.56/0.66, DFA 0.48/0.60.
#[test]
#[cfg_attr(
    debug_assertions,
    ignore = "trains FC-2 on 20k MNIST samples; run with --release"
)]
fn fdfa_aligns_best_with_backpropagation_on_mnist() -> Result<()> {
    let Some(_) = crate::common::mnist_or_skip("fdfa_aligns_best_with_backpropagation_on_mnist")
    else {
        return Ok(());
    };
    let mut results = Vec::new();
    for kind in [RuleKind::Fdfa, RuleKind::Dkp, RuleKind::Dfa] {
        let layers = mnist_alignment(kind, 20_000)?;
        for l in &layers {
            eprintln!(
                "{kind} {}: update cosine {:.3}, block cosine {:.3}, feedback cosine {:.3}",
                l.weight,
                l.update_cosine,
                l.block_cosine,
                l.feedback_cosine.unwrap_or(f64::NAN)
            );
        }
        results.push(layers);
    }
    let [fdfa, dkp, dfa] = [&results[0], &results[1], &results[2]];
    for l in 0..2 {
        let (f, k, d) = (
            fdfa[l].update_cosine,
            dkp[l].update_cosine,
            dfa[l].update_cosine,
        );
        assert!(f > 0.75, "layer {l}: FDFA's update cosine {f}");
        assert!(f > k + 0.1, "layer {l}: FDFA {f} vs DKP {k}");
        assert!(k > d, "layer {l}: DKP {k} vs DFA {d}");
        let feedback = |a: &LayerAlignment| a.feedback_cosine.unwrap_or(0.0);
        assert!(
            feedback(&fdfa[l]) > 0.85,
            "layer {l}: FDFA's feedback cosine"
        );
        assert!(feedback(&fdfa[l]) > feedback(&dkp[l]).max(feedback(&dfa[l])));
    }
    Ok(())
}
