//! Float features of any rank: a model trained on them through the public API, the checks
//! that data and model fit before anything is trained, and normalisation reused for new
//! inputs.

use std::ops::ControlFlow;

use fdfa::data::{DataSource, Dataset, FeatureDataset, Normalize};
use fdfa::rules::RuleKind;
use fdfa::train::{TrainConfig, Trainer};
use fdfa::{Error, Tensor};

/// Two noisy Gaussian blobs in 6 dimensions, far from the origin and on another scale than
/// the network's initialisation expects, so that learning them needs the normalisation.
fn blobs(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for i in 0..n {
        let class = (i % 2) as u32;
        for d in 0..6 {
            let centre = if class == 0 { 100.0 } else { 104.0 } + d as f32;
            x.push(centre + 6.0 * (uniform() - 0.5));
        }
        y.push(class);
    }
    (x, y)
}

#[test]
fn an_mlp_learns_normalised_float_features() {
    let (x, y) = blobs(512, 1);
    let train = FeatureDataset::new(x, &[6], y, 2).unwrap();
    let norm = Normalize::standardize(&train);
    let train = train.with_normalize(norm.clone()).unwrap();
    let (xt, yt) = blobs(256, 2);
    let test = FeatureDataset::new(xt.clone(), &[6], yt.clone(), 2)
        .unwrap()
        .with_normalize(norm.clone())
        .unwrap();
    let mut rng = fdfa::init::rng(0);
    let model = fdfa::model::fc(&[6], 1, 32, 2, &mut rng).unwrap();
    let rule = RuleKind::Fdfa.build(&model, 1, &mut rng).unwrap();
    let config = TrainConfig::default()
        .with_batch_size(32)
        .with_epochs(4)
        .with_lr(1e-2)
        .with_b_lr(1e-2);
    let mut trainer = Trainer::new(model, rule, config).unwrap();
    let records = trainer
        .fit(&train, &test, &mut |_| ControlFlow::Continue(()))
        .unwrap();
    let last = records.last().unwrap();
    assert!(last.test_accuracy > 95.0, "{records:?}");

    // New inputs normalised by hand with the dataset's map give the same accuracy.
    let mut new = Tensor::from_vec(&[256, 6], xt).unwrap();
    train.normalize().unwrap().apply(&mut new).unwrap();
    let model = trainer.model_mut();
    let logits = model.infer(&new).unwrap();
    let correct = logits
        .data()
        .chunks(2)
        .zip(&yt)
        .filter(|(row, y)| usize::from(row[1] > row[0]) == **y as usize)
        .count();
    assert!(
        (correct as f64 / 256.0 * 100.0 - last.test_accuracy).abs() < 1e-9,
        "{correct} {last:?}"
    );
}

fn trainer_for(input: &[usize], classes: usize) -> Trainer {
    let mut rng = fdfa::init::rng(0);
    let model = fdfa::model::fc(input, 1, 8, classes, &mut rng).unwrap();
    let rule = RuleKind::Bp.build(&model, 1, &mut rng).unwrap();
    let config = TrainConfig::default().with_batch_size(2).with_epochs(1);
    Trainer::new(model, rule, config).unwrap()
}

#[test]
fn classes_and_shapes_are_checked_before_the_first_batch() {
    let ten = Dataset::new(vec![0; 4 * 4], vec![0, 9, 3, 1], [1, 2, 2], 10).unwrap();
    let mut trainer = trainer_for(&[1, 2, 2], 2);
    let err = trainer
        .fit(&ten, &ten, &mut |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(err, Error::ClassMismatch { data: 10, model: 2 }),
        "{err}"
    );
    assert_eq!(trainer.progress().batch, 0);

    // The same number of values in another image size is refused, a flat row is not.
    let other = Dataset::new(vec![0; 2 * 4], vec![0, 1], [1, 1, 4], 2).unwrap();
    let err = trainer
        .fit(&other, &other, &mut |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InputMismatch { data, model } if data == &[1, 1, 4] && model == &[1, 2, 2]),
        "{err}"
    );
    let flat = FeatureDataset::new(vec![0.5; 2 * 4], &[4], vec![0, 1], 2).unwrap();
    assert_eq!(flat.sample_shape(), [4]);
    let mut trainer = trainer_for(&[1, 2, 2], 2);
    assert!(
        trainer
            .fit(&flat, &flat, &mut |_| ControlFlow::Continue(()))
            .is_ok()
    );
}
