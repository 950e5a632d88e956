//! Trains FC-n with 1000-wide hidden layers or, with `--conv`, the shallow CNN on CIFAR-10
//! (binary version, `cifar-10-batches-bin`).
//!
//! ```text
//! cargo run --release --example cifar10 -- --conv --data-dir path/to/cifar-10-batches-bin
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::main_with(DatasetName::Cifar10, Some(1000), |args, rng| {
        if args.conv {
            fdfa::model::shallow_cnn(&[3, 32, 32], 10, rng)
        } else {
            fdfa::model::fc(&[3, 32, 32], args.n_layers, 1000, 10, rng)
        }
    });
}
