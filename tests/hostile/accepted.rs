//! What used to be accepted without a word (item 8), at the library's level; the examples'
//! side is in `examples.rs`.

use std::fs;
use std::ops::ControlFlow;

use fdfa::train::checkpoint::load_trainer;

use super::checksum::without_checksums;
use super::{TempDir, data, saved, trainer};

#[test]
fn a_position_past_the_end_of_the_epoch_is_refused_not_finished() {
    let tmp = TempDir::new("batch-range");
    let dir = tmp.path().join("ckpt");
    saved(&dir, 1);
    let path = dir.join("state.json");
    let text = without_checksums(&fs::read_to_string(&path).unwrap());
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["progress"]["batch"] = 99.into();
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let mut t = trainer(1);
    load_trainer(&dir, &mut t).unwrap();
    let err = t
        .train_epoch(data(), &mut |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "training: invalid `progress.batch`: 99 batches done, but an epoch of 128 samples has 4"
    );
}

#[test]
fn a_batch_larger_than_the_test_set_evaluates_it_whole_without_a_huge_allocation() {
    // `usize::MAX` used to overflow the capacity of the evaluation chunk (a panic after a
    // whole epoch), 10^11 to abort allocating 800 GB; the test set is 128 samples.
    let mut reference = trainer(1);
    let expected = reference.evaluate(data()).unwrap();
    for (batch, test) in [
        (usize::MAX, 64),
        (32, 100_000_000_000),
        (usize::MAX, usize::MAX),
    ] {
        let mut config = reference.config().clone();
        config.batch_size = batch;
        config.test_batch_size = test;
        let mut rng = fdfa::init::rng(5);
        let model = fdfa::model::fc(&[1, 28, 28], 1, 16, 10, &mut rng).unwrap();
        let rule = fdfa::rules::RuleKind::Fdfa
            .build(&model, 1, &mut rng)
            .unwrap();
        let mut t = fdfa::train::Trainer::new(model, rule, config).unwrap();
        let (loss, accuracy) = t.evaluate(data()).unwrap();
        assert!(loss.is_finite(), "{batch} {test}");
        assert_eq!(accuracy, expected.1, "{batch} {test}");
        if batch == 32 {
            assert_eq!(loss, expected.0, "the same groups of 32");
        }
    }
}
