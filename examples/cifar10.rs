//! Trains FC-n with 1000-wide hidden layers or, with `--conv`, the shallow CNN on CIFAR-10
//! (binary version, `cifar-10-batches-bin`).
//!
//! ```text
//! cargo run --release --example cifar10 -- --conv --data-dir path/to/cifar-10-batches-bin
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::run_reference(DatasetName::Cifar10);
}
