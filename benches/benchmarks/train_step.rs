//! One full training step (rule step, then both optimizers) for every (network, rule) pair of
//! FC-2, FC-3 and the shallow CNN at batch 64 and AlexNet at batch 16, and inference at
//! batch 1000 (AlexNet: 64).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use fdfa::model::Model;
use fdfa::optim::{AdamConfig, Parameters};
use fdfa::rules::{Learned, RuleKind};
use fdfa::{Tensor, init};

fn network(name: &str, rng: &mut init::Rng) -> Model {
    match name {
        "fc2" => fdfa::model::fc(&[1, 28, 28], 2, 800, 10, rng),
        "fc3" => fdfa::model::fc(&[1, 28, 28], 3, 800, 10, rng),
        "cnn" => fdfa::model::shallow_cnn(&[1, 28, 28], 10, rng),
        _ => fdfa::model::alexnet_bn(100, rng),
    }
    .unwrap()
}

fn batch(model: &Model, n: usize, rng: &mut init::Rng) -> (Tensor, Vec<usize>) {
    let mut shape = vec![n];
    shape.extend_from_slice(model.input_shape());
    let mut x = Tensor::zeros(&shape);
    init::fill_normal(x.data_mut(), rng);
    (x, (0..n).map(|i| i % model.classes()).collect())
}

fn train_step(c: &mut Criterion) {
    for (name, n) in [("fc2", 64), ("fc3", 64), ("cnn", 64), ("alexnet", 16)] {
        let mut group = c.benchmark_group(format!("train_step/{name}"));
        group.throughput(Throughput::Elements(n as u64));
        if name == "alexnet" {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(20));
        }
        for kind in [RuleKind::Bp, RuleKind::Dfa, RuleKind::Dkp, RuleKind::Fdfa] {
            let mut rng = init::rng(1);
            let mut model = network(name, &mut rng);
            let mut rule = kind.build(&model, 1, &mut rng).unwrap();
            let (x, targets) = batch(&model, n, &mut rng);
            let mut fwd = AdamConfig::default().with_lr(1e-4).init().unwrap();
            let mut fb = AdamConfig::default().with_lr(1e-4).init().unwrap();
            group.bench_function(BenchmarkId::from_parameter(kind), |b| {
                b.iter(|| {
                    rule.step(&mut model, &x, &targets, &mut rng).unwrap();
                    let _ = fb.step(&mut Learned(rule.as_mut()));
                    let _ = fwd.step(&mut model as &mut dyn Parameters);
                })
            });
        }
        group.finish();
    }
}

fn inference(c: &mut Criterion) {
    let mut group = c.benchmark_group("inference");
    for (name, n) in [("fc2", 1000), ("cnn", 1000), ("alexnet", 64)] {
        let mut rng = init::rng(1);
        let mut model = network(name, &mut rng);
        let (x, _) = batch(&model, n, &mut rng);
        group.throughput(Throughput::Elements(n as u64));
        if name == "alexnet" {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(20));
        }
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter(|| model.infer(&x).unwrap().len())
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = train_step, inference
}
