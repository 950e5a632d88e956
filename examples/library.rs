//! fdfa as a library, through its public API only: a network of one's own from the builder,
//! trained with FDFA on float features, a training loop of one's own, predictions for new
//! inputs from a shared model, saving and reloading, and the JVP of the network's output.
//!
//! ```sh
//! cargo run --release --example library
//! ```

use std::ops::ControlFlow;

use fdfa::model::Mode;
use fdfa::prelude::*;

/// Two noisy clusters in 20 dimensions, on a scale far from the network's (so the data is
/// normalised the way a user's own features would be).
fn clusters(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut noise = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut x = Vec::with_capacity(n * 20);
    let labels = (0..n).map(|i| (i % 2) as u32).collect::<Vec<_>>();
    for &label in &labels {
        for d in 0..20 {
            let centre = 50.0 + if label == 1 && d < 5 { 3.0 } else { 0.0 };
            x.push(centre + 8.0 * noise());
        }
    }
    (x, labels)
}

/// An MLP 20-64-32-2 without BatchNorm, a feedback point after each hidden layer.
fn mlp(rng: &mut fdfa::init::Rng) -> fdfa::Result<Model> {
    Sequential::new(&[20])
        .linear(64)
        .relu()
        .feedback()
        .linear(32)
        .relu()
        .feedback()
        .linear(2)
        .build(rng)
}

fn main() -> fdfa::Result<()> {
    // Custom data: float features with labels, standardised as a scaler would.
    let (x, y) = clusters(2048, 1);
    let raw = FeatureDataset::new(x, &[20], y, 2)?;
    let norm = Normalize::standardize(&raw);
    let train = raw.with_normalize(norm.clone())?;
    let (xt, yt) = clusters(512, 2);
    let test =
        FeatureDataset::new(xt.clone(), &[20], yt.clone(), 2)?.with_normalize(norm.clone())?;

    // A custom network, feedback points where FDFA delivers its signal.
    let mut rng = fdfa::init::rng(0);
    let model = mlp(&mut rng)?;
    let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
    let config = TrainConfig::default()
        .with_epochs(3)
        .with_lr(1e-3)
        .with_b_lr(1e-3);
    let mut trainer = Trainer::new(model, rule, config)?;
    for r in trainer.fit(&train, &test, &mut |_| ControlFlow::Continue(()))? {
        println!("epoch {}: test accuracy {:.2}%", r.epoch, r.test_accuracy);
    }

    // A loop of one's own: one more step on a batch built by hand.
    let mut batch = Tensor::from_vec(&[4, 20], train.features()[..80].to_vec())?;
    norm.apply(&mut batch)?;
    let targets: Vec<usize> = train.labels()[..4].iter().map(|&l| l as usize).collect();
    println!(
        "one more step: loss {:.4}",
        trainer.train_batch(&batch, &targets)?
    );

    // Predictions for new inputs, normalised as training saw them, from a shared model.
    let mut new = Tensor::from_vec(&[512, 20], xt)?;
    norm.apply(&mut new)?;
    let model = trainer.model();
    let predicted = model.predict(&new)?;
    let right = predicted
        .iter()
        .zip(&yt)
        .filter(|(p, y)| **p == **y as usize)
        .count();
    let p = model.predict_proba(&new)?;
    println!(
        "predict: {right} of 512 right; sample 0 is class {} with probability {:.3}",
        predicted[0],
        p.data()[predicted[0]]
    );

    // Save (from a shared reference, to a path given as a string) and reload into the same
    // architecture.
    let path =
        std::env::temp_dir().join(format!("fdfa-library-{}.safetensors", std::process::id()));
    save_model(&path, model)?;
    let mut reloaded = mlp(&mut fdfa::init::rng(99))?;
    load_model(&path, &mut reloaded)?;
    std::fs::remove_file(&path).ok();
    println!(
        "reloaded: same predictions: {}",
        reloaded.predict(&new)? == predicted
    );

    // Forward-mode AD: the output's derivative along an input direction, in the same pass.
    let x0 = Tensor::from_vec(&[1, 20], new.data()[..20].to_vec())?;
    let v = Tensor::from_vec(
        &[1, 20],
        (0..20).map(|i| if i < 5 { 1.0 } else { 0.0 }).collect(),
    )?;
    let (logits, tangent) = reloaded.jvp(&x0, &v, Mode::Eval)?;
    let h = 1e-2;
    let moved = Tensor::from_vec(
        &[1, 20],
        x0.data()
            .iter()
            .zip(v.data())
            .map(|(a, b)| a + h * b)
            .collect(),
    )?;
    let fd: Vec<f32> = reloaded
        .logits(&moved)?
        .data()
        .iter()
        .zip(logits.data())
        .map(|(a, b)| (a - b) / h)
        .collect();
    println!("jvp: {:?}, forward difference {:?}", tangent.data(), fd);
    Ok(())
}
