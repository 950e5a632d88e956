//! Criterion benchmarks: `cargo bench`. Throughput is declared in samples, so criterion
//! reports samples per second.

mod benchmarks;

criterion::criterion_main! {
    benchmarks::kernels::benches,
    benchmarks::layers::benches,
    benchmarks::train_step::benches,
}
