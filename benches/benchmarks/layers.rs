//! Every layer's forward, dual forward (one tangent) and backward at the sizes the reference
//! networks use, batch 64.

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use fdfa::layers::{
    AdaptiveAvgPool2d, BatchNormConfig, Conv2dConfig, Flatten, Layer, LinearConfig, MaxPool2d, Relu,
};
use fdfa::{Dual, Tensor, init};

const BATCH: usize = 64;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut t = Tensor::zeros(shape);
    init::fill_normal(t.data_mut(), &mut init::rng(seed));
    t
}

fn bench_layer(c: &mut Criterion, name: &str, mut layer: Box<dyn Layer>, input: &[usize]) {
    let mut group = c.benchmark_group(format!("layer/{name}"));
    group.throughput(Throughput::Elements(input[0] as u64));
    let x = randn(input, 1);
    let plain = Dual::new(x.clone());
    let dual = Dual::with_tangent(x.clone(), randn(input, 2)).unwrap();
    let mut out = Dual::default();
    let mut y = Tensor::default();
    group.bench_function("forward", |b| b.iter(|| layer.infer(&x, &mut y).unwrap()));
    group.bench_function("train_forward", |b| {
        b.iter(|| layer.forward(&plain, &mut out).unwrap())
    });
    group.bench_function("dual_forward", |b| {
        b.iter(|| layer.forward(&dual, &mut out).unwrap())
    });
    layer.forward(&plain, &mut out).unwrap();
    let g = randn(out.primal().shape(), 3);
    let mut gx = Tensor::default();
    let out_primal = out.primal().clone();
    group.bench_function(BenchmarkId::new("backward", "params_only"), |b| {
        b.iter(|| layer.backward(&x, &out_primal, &g, None).unwrap())
    });
    group.bench_function(BenchmarkId::new("backward", "with_input_grad"), |b| {
        b.iter(|| layer.backward(&x, &out_primal, &g, Some(&mut gx)).unwrap())
    });
    group.finish();
}

fn layers(c: &mut Criterion) {
    let mut rng = init::rng(0);
    let n = BATCH;
    let cases: Vec<(&str, Box<dyn Layer>, Vec<usize>)> = vec![
        (
            "linear_784x800",
            Box::new(LinearConfig::new(784, 800).init(&mut rng).unwrap()),
            vec![n, 784],
        ),
        (
            "linear_800x800",
            Box::new(LinearConfig::new(800, 800).init(&mut rng).unwrap()),
            vec![n, 800],
        ),
        (
            "linear_4000x128",
            Box::new(LinearConfig::new(4000, 128).init(&mut rng).unwrap()),
            vec![n, 4000],
        ),
        (
            "conv_1x15_k5_28",
            Box::new(Conv2dConfig::new(1, 15, 5).init(&mut rng).unwrap()),
            vec![n, 1, 28, 28],
        ),
        (
            "conv_15x40_k5_24",
            Box::new(Conv2dConfig::new(15, 40, 5).init(&mut rng).unwrap()),
            vec![n, 15, 24, 24],
        ),
        (
            "batchnorm1d_800",
            Box::new(BatchNormConfig::d1(800).init().unwrap()),
            vec![n, 800],
        ),
        (
            "batchnorm2d_40x20x20",
            Box::new(BatchNormConfig::d2(40).init().unwrap()),
            vec![n, 40, 20, 20],
        ),
        (
            "relu_40x20x20",
            Box::new(Relu::new("relu")),
            vec![n, 40, 20, 20],
        ),
        (
            "maxpool2_40x20x20",
            Box::new(MaxPool2d::new("pool", 2, 2).unwrap()),
            vec![n, 40, 20, 20],
        ),
        (
            "adaptiveavgpool6_256x13x13",
            Box::new(AdaptiveAvgPool2d::new("avg", 6, 6).unwrap()),
            vec![n, 256, 13, 13],
        ),
        (
            "flatten_40x10x10",
            Box::new(Flatten::new("flatten")),
            vec![n, 40, 10, 10],
        ),
    ];
    for (name, layer, input) in cases {
        bench_layer(c, name, layer, &input);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = layers
}
