//! Data-parallel training over ranks that are threads of this process
//! ([`ThreadGroup`]: the arithmetic of the MPI transport without MPI; `tests/mpi.rs` runs the
//! same under `mpirun`).
//!
//! N ranks must train the single process's model (the same up to the order of f32
//! summation) for every rule, on the FC network and the CNN, both with BatchNorm, on a data
//! set whose last batch is short and splits unevenly; every rank must hold the same bits,
//! and a run must repeat bit for bit.

use std::ops::ControlFlow;
use std::sync::Arc;

use fdfa::data::Dataset;
use fdfa::distributed::{BatchNormSync, Communicator, ThreadGroup};
use fdfa::layers::{State, StateMut};
use fdfa::model::Model;
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::{RunInfo, load_trainer, save_trainer};
use fdfa::train::{EpochRecord, TrainConfig, Trainer};
use fdfa::{Error, Result};

#[derive(Clone, Copy, Debug)]
enum Net {
    Fc2,
    Cnn,
}

/// 200 training images (batches of 64, 64, 64 and 8) and 100 test images of noise with
/// labels to learn.
fn data() -> (Dataset, Dataset) {
    let make = |n: usize, seed: u64| {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let labels: Vec<u32> = (0..n).map(|_| next() % 10).collect();
        // The label brightens its own rows, so that there is something to learn.
        let mut pixels = Vec::with_capacity(n * 784);
        for &l in &labels {
            for p in 0..784 {
                let bright = (p / 28) as u32 / 3 == l;
                pixels.push((next() % 128 + if bright { 120 } else { 0 }) as u8);
            }
        }
        Dataset::new(pixels, labels, [1, 28, 28], 10).unwrap()
    };
    (make(200, 1), make(100, 2))
}

fn config(seed: u64) -> TrainConfig {
    TrainConfig::default()
        .with_epochs(2)
        .with_lr(1e-3)
        .with_b_lr(1e-3)
        .with_test_batch_size(64)
        .with_seed(seed)
}

fn trainer(net: Net, rule: RuleKind, seed: u64) -> Result<Trainer> {
    trainer_with(net, rule, config(seed))
}

fn trainer_with(net: Net, rule: RuleKind, config: TrainConfig) -> Result<Trainer> {
    let mut rng = fdfa::init::rng(config.seed);
    let model: Model = match net {
        Net::Fc2 => fdfa::model::fc(&[1, 28, 28], 2, 64, 10, &mut rng)?,
        Net::Cnn => fdfa::model::shallow_cnn(&[1, 28, 28], 10, &mut rng)?,
    };
    let rule = rule.build(&model, 1, &mut rng)?;
    Trainer::new(model, rule, config)
}

/// Every value of the model's state and of the rule's feedback matrices, in order.
fn state(trainer: &Trainer) -> Vec<f32> {
    let mut out = Vec::new();
    trainer.model().visit_state(&mut |_, s| match s {
        State::Param(p) => out.extend(p.value().data()),
        State::Buffer(b) => out.extend(b.data()),
        State::Counter(c) => out.push(c as f32),
    });
    if let Some(fb) = trainer.rule().feedback() {
        for b in fb.matrices() {
            out.extend(b.value.data());
        }
    }
    out
}

struct Outcome {
    state: Vec<f32>,
    /// The name and length of every tensor of `state`, in order.
    names: Vec<(String, usize)>,
    records: Vec<EpochRecord>,
}

fn fit(mut t: Trainer) -> Result<Outcome> {
    let (train, test) = data();
    let records = t.fit(&train, &test, &mut |_| ControlFlow::Continue(()))?;
    let mut names = Vec::new();
    t.model().visit_state(&mut |name, s| {
        let len = match s {
            State::Param(p) => p.value().len(),
            State::Buffer(b) => b.len(),
            State::Counter(_) => 1,
        };
        names.push((name.to_string(), len));
    });
    if let Some(fb) = t.rule().feedback() {
        for (name, b) in fb.names().iter().zip(fb.matrices()) {
            names.push((name.clone(), b.value.len()));
        }
    }
    Ok(Outcome {
        state: state(&t),
        names,
        records,
    })
}

/// Runs `f(rank's communicator)` on `size` ranks of one worker thread each; returns each
/// rank's result.
fn on_ranks<T: Send>(size: usize, f: impl Fn(ThreadGroup) -> T + Sync) -> Vec<T> {
    ThreadGroup::run(size, 1, f).unwrap()
}

fn distributed(net: Net, rule: RuleKind, size: usize, bn: BatchNormSync) -> Vec<Outcome> {
    on_ranks(size, |comm| {
        let mut t = trainer(net, rule, 3)?;
        t.set_distributed(Arc::new(comm), bn)?;
        fit(t)
    })
    .into_iter()
    .collect::<Result<_>>()
    .unwrap()
}

/// The largest difference relative to the largest magnitude of `want`.
fn relative_gap(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs() as f64));
    let gap = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    gap / scale.max(1e-30)
}

/// One epoch of two runs of one algorithm whose sums ran in different orders: the losses
/// within 0.2% and the accuracy within a point (a network early in training has many
/// inputs near a decision boundary).
fn assert_same_function(what: &str, got: &EpochRecord, want: &EpochRecord) {
    let close = (got.test_accuracy - want.test_accuracy).abs() <= 1.0
        && (got.test_loss - want.test_loss).abs() < 2e-3 * want.test_loss
        && (got.train_loss - want.train_loss).abs() < 2e-3 * want.train_loss;
    assert!(close, "{what}: {got:?} against {want:?}");
}

fn assert_same_bits(ranks: &[Outcome], what: &str) {
    for (r, o) in ranks.iter().enumerate().skip(1) {
        assert!(
            o.state
                .iter()
                .zip(&ranks[0].state)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: rank {r} holds other weights than rank 0"
        );
        assert_eq!(o.records, ranks[0].records, "{what}: rank {r}'s records");
    }
}

/// Every gradient (forward parameters, then learned feedback matrices) by name, after the
/// first step of a run whose learning rates are zero (so that nothing else moves).
fn step_gradients(
    comm: Option<ThreadGroup>,
    net: Net,
    rule: RuleKind,
) -> Result<Vec<(String, Vec<f32>)>> {
    let (train, test) = data();
    let mut t = trainer_with(net, rule, config(3).with_lr(0.0).with_b_lr(0.0))?;
    if let Some(comm) = comm {
        t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)?;
    }
    t.fit(&train, &test, &mut |_| ControlFlow::Break(()))?;
    let mut out = Vec::new();
    t.model().visit_state(&mut |name, s| {
        if let State::Param(p) = s {
            out.push((name.to_string(), p.grad().data().to_vec()));
        }
    });
    if let Some(fb) = t.rule().feedback() {
        for (name, b) in fb.names().iter().zip(fb.matrices()) {
            out.push((name.clone(), b.grad.data().to_vec()));
        }
    }
    Ok(out)
}

/// The largest difference over `scale`.
fn gap_over(got: &[f32], want: &[f32], scale: f64) -> f64 {
    assert_eq!(got.len(), want.len());
    let gap = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (a, b)| m.max((*a as f64 - *b as f64).abs()));
    gap / scale
}

/// The bias of a layer followed by BatchNorm in both networks (every layer but the output).
fn feeds_batch_norm(name: &str) -> bool {
    name.ends_with(".bias")
        && !name.starts_with("fc_out")
        && !name.starts_with("bn")
        && !name.contains("_bn")
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs() as f64))
}

#[test]
fn every_rule_on_n_ranks_computes_the_single_process_gradients() {
    for net in [Net::Fc2, Net::Cnn] {
        for rule in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
            let alone = step_gradients(None, net, rule).unwrap();
            for size in [2, 3] {
                let what = format!("{net:?} {rule} on {size} ranks");
                let ranks: Vec<_> = on_ranks(size, |comm| step_gradients(Some(comm), net, rule))
                    .into_iter()
                    .collect::<Result<_>>()
                    .unwrap();
                for (r, g) in ranks.iter().enumerate() {
                    assert_eq!(g, &ranks[0], "{what}: rank {r}'s gradients");
                }
                // Each tensor against its own scale. The bias of a layer that feeds
                // BatchNorm has a gradient of exactly zero in exact arithmetic (the
                // normalisation removes any shift): in f32 both sides are rounding noise,
                // and both must be that small.
                let top = alone.iter().map(|(_, g)| max_abs(g)).fold(0.0, f64::max);
                assert!(top > 0.0, "{what}: no gradient at all");
                for ((name, got), (_, want)) in ranks[0].iter().zip(&alone) {
                    if feeds_batch_norm(name) {
                        let noise = max_abs(got).max(max_abs(want)) / top;
                        assert!(noise < 1e-5, "{what}: {name} is {noise:e} of the largest");
                        continue;
                    }
                    if max_abs(want) == 0.0 {
                        // DFA's fixed feedback matrices have no gradient.
                        assert_eq!(got, want, "{what}: {name}");
                        continue;
                    }
                    let gap = gap_over(got, want, max_abs(want));
                    assert!(gap < 2e-5, "{what}: {name} differs by {gap:e} of its scale");
                }
            }
        }
    }
}

#[test]
fn every_rule_on_n_ranks_trains_the_single_process_model() {
    for net in [Net::Fc2, Net::Cnn] {
        for rule in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
            let alone = fit(trainer(net, rule, 3).unwrap()).unwrap();
            for size in [2, 3] {
                let what = format!("{net:?} {rule} on {size} ranks");
                let ranks = distributed(net, rule, size, BatchNormSync::Synchronized);
                assert_same_bits(&ranks, &what);
                // Adam turns any gradient near zero into a step of the full learning rate,
                // so f32 rounding moves single weights by up to the learning rate; what the
                // network computes must agree closely.
                for (a, b) in ranks[0].records.iter().zip(&alone.records) {
                    assert_same_function(&what, a, b);
                }
                if rule == RuleKind::Bp {
                    // BP's weights after two epochs, tensor by tensor against its own scale,
                    // but for the tensors that follow rounding noise: biases feeding
                    // BatchNorm (whose gradient is zero in exact arithmetic) and the running
                    // means that track them.
                    let mut at = 0;
                    for (name, len) in &alone.names {
                        let (got, want) =
                            (&ranks[0].state[at..at + len], &alone.state[at..at + len]);
                        at += len;
                        if feeds_batch_norm(name) || name.ends_with("running_mean") {
                            continue;
                        }
                        let gap = gap_over(got, want, max_abs(want).max(1e-30));
                        assert!(gap < 1e-4, "{what}: {name} differs by {gap:e} of its scale");
                    }
                }
                // Not the same bits as one process: the sums run in another order (a test
                // that the comparison above is not vacuous).
                assert_ne!(ranks[0].state, alone.state, "{what}");
            }
        }
    }
}

#[test]
fn a_run_on_n_ranks_repeats_bit_for_bit() {
    for rule in [RuleKind::Fdfa, RuleKind::Bp] {
        let first = distributed(Net::Cnn, rule, 3, BatchNormSync::Synchronized);
        let second = distributed(Net::Cnn, rule, 3, BatchNormSync::Synchronized);
        assert_eq!(first[0].state, second[0].state, "{rule}");
        assert_eq!(first[0].records, second[0].records, "{rule}");
    }
}

#[test]
fn per_rank_batch_norm_is_another_algorithm_that_ranks_agree_on() {
    let alone = fit(trainer(Net::Cnn, RuleKind::Fdfa, 3).unwrap()).unwrap();
    let ranks = distributed(Net::Cnn, RuleKind::Fdfa, 2, BatchNormSync::PerRank);
    assert_same_bits(&ranks, "per-rank BatchNorm");
    let gap = relative_gap(&ranks[0].state, &alone.state);
    assert!(gap > 1e-4, "per-rank statistics changed nothing ({gap:e})");
}

#[test]
fn ranks_that_disagree_are_refused_by_every_rank() {
    let errors = on_ranks(3, |comm| {
        let rank = comm.rank();
        // Rank 2 builds its model from another seed.
        let mut t = trainer(Net::Fc2, RuleKind::Dfa, if rank == 2 { 4 } else { 3 }).unwrap();
        t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)
            .unwrap_err()
    });
    for e in errors {
        let text = e.to_string();
        assert!(matches!(e, Error::Distributed { .. }), "{text}");
        assert!(text.contains("rank 2 disagrees with rank 0"), "{text}");
    }
    // A batch smaller than the group cannot be split.
    let errors = on_ranks(2, |comm| {
        let mut t = trainer_with(Net::Fc2, RuleKind::Dfa, config(3).with_batch_size(1)).unwrap();
        t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)
            .unwrap_err()
            .to_string()
    });
    assert!(
        errors
            .iter()
            .all(|e| e.contains("cannot be split over 2 ranks")),
        "{errors:?}"
    );
}

#[test]
fn a_non_finite_value_on_one_rank_stops_every_rank() {
    let errors = on_ranks(2, |comm| {
        let rank = comm.rank();
        let mut t = trainer(Net::Fc2, RuleKind::Fdfa, 3).unwrap();
        t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)
            .unwrap();
        if rank == 1 {
            // Only rank 1's copy goes bad, as a fault on one machine would.
            t.model_mut().visit_state_mut(&mut |name, s| {
                if let (true, StateMut::Param(mut p)) = (name == "fc_hidden.0.weight", s) {
                    p.storage_mut().0[0] = f32::NAN;
                }
            });
        }
        fit(t).err().map(|e| e.to_string())
    });
    // The NaN reaches every rank through the synchronised BatchNorm and the summed
    // gradients: each stops at the same step with the same report.
    for (rank, e) in errors.iter().enumerate() {
        let e = e.as_deref().unwrap_or("no error");
        assert!(
            e.contains("non-finite value in") && e.ends_with("at epoch 1, batch 1"),
            "rank {rank}: {e}"
        );
        assert_eq!(Some(e), errors[0].as_deref(), "rank {rank}");
    }
}

#[test]
fn a_checkpoint_of_three_ranks_resumes_on_two_ranks_or_one_process() {
    let dir = std::env::temp_dir().join(format!("fdfa-distributed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (train, test) = data();
    let rule = RuleKind::Dkp;
    let whole = distributed(Net::Cnn, rule, 3, BatchNormSync::Synchronized);
    // Three ranks stop after batch 2 of epoch 2; rank 0 saves.
    on_ranks(3, |comm| {
        let rank = comm.rank();
        let mut t = trainer(Net::Cnn, rule, 3).unwrap();
        t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)
            .unwrap();
        t.fit(
            &train,
            &test,
            &mut |ev| match ev.epoch == 2 && ev.batch == 2 {
                true => ControlFlow::Break(()),
                false => ControlFlow::Continue(()),
            },
        )
        .unwrap();
        if rank == 0 {
            save_trainer(&dir, &mut t, &RunInfo::default()).unwrap();
        }
    });
    let resume = |comm: Option<ThreadGroup>| -> Outcome {
        let mut t = trainer(Net::Cnn, rule, 3).unwrap();
        load_trainer(&dir, &mut t).unwrap();
        if let Some(comm) = comm {
            t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)
                .unwrap();
        }
        fit(t).unwrap()
    };
    // On the same number of ranks the run continues exactly.
    let on_three = on_ranks(3, |comm| resume(Some(comm)));
    assert_same_bits(&on_three, "resumed on 3 ranks");
    assert_eq!(on_three[0].state, whole[0].state, "resumed on 3 ranks");
    assert_eq!(on_three[0].records, whole[0].records, "resumed on 3 ranks");
    // On others, it continues the same algorithm (up to f32 summation order).
    let on_two = on_ranks(2, |comm| resume(Some(comm)));
    assert_same_bits(&on_two, "resumed on 2 ranks");
    let alone = resume(None);
    let _ = std::fs::remove_dir_all(&dir);
    for (what, o) in [("2 ranks", &on_two[0]), ("one process", &alone)] {
        assert_eq!(
            o.records[0], whole[0].records[0],
            "{what}: epoch 1 was saved"
        );
        assert_same_function(what, &o.records[1], &whole[0].records[1]);
        assert_ne!(o.state, whole[0].state, "{what}");
    }
}

fn block_parallel(net: Net, rule: RuleKind, size: usize) -> Vec<Outcome> {
    on_ranks(size, |comm| {
        let mut t = trainer(net, rule, 3)?;
        t.set_block_parallel(Arc::new(comm))?;
        fit(t)
    })
    .into_iter()
    .collect::<Result<_>>()
    .unwrap()
}

#[test]
fn block_parallel_training_is_the_single_process_algorithm_bit_for_bit() {
    // FC-2 has 3 blocks, the CNN 4: 2 ranks split them 1+2 and 2+2, 3 ranks 1+1+1 and 1+1+2.
    for net in [Net::Fc2, Net::Cnn] {
        for rule in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
            let alone = fit(trainer(net, rule, 3).unwrap()).unwrap();
            for size in [2, 3] {
                let what = format!("{net:?} {rule} block-parallel on {size} ranks");
                let ranks = block_parallel(net, rule, size);
                assert_same_bits(&ranks, &what);
                assert!(
                    ranks[0].state == alone.state,
                    "{what}: weights differ by {:e} of their scale",
                    relative_gap(&ranks[0].state, &alone.state)
                );
                assert_eq!(ranks[0].records, alone.records, "{what}");
            }
        }
    }
}

#[test]
fn block_parallel_refuses_what_it_cannot_split() {
    // More ranks than blocks, and a rule without a block-parallel form.
    let errors = on_ranks(4, |comm| {
        let mut t = trainer(Net::Fc2, RuleKind::Dfa, 3).unwrap();
        t.set_block_parallel(Arc::new(comm))
            .unwrap_err()
            .to_string()
    });
    assert!(
        errors
            .iter()
            .all(|e| e.contains("at most one rank per block")),
        "{errors:?}"
    );
    let errors = on_ranks(2, |comm| {
        let mut t = trainer(Net::Fc2, RuleKind::Fgw, 3).unwrap();
        t.set_block_parallel(Arc::new(comm))
            .unwrap_err()
            .to_string()
    });
    assert!(
        errors.iter().all(|e| e.contains("FGW does not support")),
        "{errors:?}"
    );
}

#[test]
fn a_block_parallel_checkpoint_resumes_on_one_process_exactly() {
    let dir = std::env::temp_dir().join(format!("fdfa-blocks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (train, test) = data();
    let rule = RuleKind::Fdfa;
    let whole = fit(trainer(Net::Cnn, rule, 3).unwrap()).unwrap();
    // Two ranks stop after batch 3 of epoch 1; rank 0 saves the whole model.
    on_ranks(2, |comm| {
        let rank = comm.rank();
        let mut t = trainer(Net::Cnn, rule, 3).unwrap();
        t.set_block_parallel(Arc::new(comm)).unwrap();
        t.fit(&train, &test, &mut |ev| match ev.batch == 3 {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        })
        .unwrap();
        if rank == 0 {
            save_trainer(&dir, &mut t, &RunInfo::default()).unwrap();
        }
    });
    let mut t = trainer(Net::Cnn, rule, 3).unwrap();
    load_trainer(&dir, &mut t).unwrap();
    let resumed = fit(t).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(resumed.state, whole.state);
    assert_eq!(resumed.records, whole.records);
}

#[test]
fn train_batch_on_every_rank_trains_the_shared_batch() {
    let (train, _) = data();
    let mut x = fdfa::Tensor::zeros(&[64, 1, 28, 28]);
    let mut targets = vec![0; 64];
    let indices: Vec<usize> = (0..64).collect();
    use fdfa::data::DataSource;
    train
        .fill_batch(&indices, 0, x.data_mut(), &mut targets)
        .unwrap();
    let steps = |t: &mut Trainer| -> Result<Vec<f32>> {
        (0..3).map(|_| t.train_batch(&x, &targets)).collect()
    };
    let mut alone = trainer(Net::Cnn, RuleKind::Fdfa, 3).unwrap();
    let want = steps(&mut alone).unwrap();
    for blocks in [false, true] {
        let ranks = on_ranks(2, |comm| {
            let mut t = trainer(Net::Cnn, RuleKind::Fdfa, 3)?;
            match blocks {
                true => t.set_block_parallel(Arc::new(comm))?,
                false => t.set_distributed(Arc::new(comm), BatchNormSync::Synchronized)?,
            }
            Ok::<_, Error>((steps(&mut t)?, state(&t)))
        });
        for r in ranks {
            let (losses, weights) = r.unwrap();
            if blocks {
                assert_eq!(losses, want);
                assert_eq!(weights, state(&alone));
            } else {
                for (a, b) in losses.iter().zip(&want) {
                    assert!((a - b).abs() < 1e-5 * b, "{a} against {b}");
                }
            }
        }
    }
}
