//! The element-wise kernels a training step runs besides its products: drawing FDFA's
//! directions and the Adam update, at the sizes of a CNN step and of FC-2's parameters.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group};
use fdfa::init;
use fdfa::layers::{Param, ParamMut};
use fdfa::optim::{AdamConfig, Parameters};

/// One parameter tensor, as an optimizer group.
struct One(Param);

impl Parameters for One {
    fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
        f("w", ParamMut::new(&mut self.0));
    }
}

fn kernels(c: &mut Criterion) {
    let mut group = c.benchmark_group("kernels");
    // The shallow CNN's feedback points hold 15x24x24 + 40x20x20 + 128 values per sample.
    let values = 64 * (15 * 24 * 24 + 40 * 20 * 20 + 128);
    let mut directions = vec![0.0f32; values];
    group.throughput(Throughput::Elements(values as u64));
    group.bench_function("directions_cnn_batch64", |b| {
        let mut stream = 0;
        b.iter(|| {
            stream += 1;
            init::fill_normal_fast(&mut directions, 7, stream);
        });
    });
    // FC-2's weights: 784x800 + 800x800 + 800x10.
    let params = 784 * 800 + 800 * 800 + 800 * 10;
    let mut rng = init::rng(3);
    let mut one = One(Param::new(init::uniform(&[params], 0.05, &mut rng)));
    one.0.grad = init::uniform(&[params], 1.0, &mut rng);
    let mut adam = AdamConfig::default()
        .with_lr(1e-4)
        .init()
        .expect("default settings are valid");
    group.throughput(Throughput::Elements(params as u64));
    group.bench_function("adam_fc2_params", |b| {
        b.iter(|| adam.step(&mut one));
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = kernels
}
