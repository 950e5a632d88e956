//! Trains AlexNet with BatchNorm on CIFAR-100 (binary version, `cifar-100-binary`), with the
//! reference's augmentation (random resized crop to 224, horizontal flip).
//!
//! ```text
//! cargo run --release --example cifar100 -- --data-dir path/to/cifar-100-binary
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::main_with(DatasetName::Cifar100, None, |_, rng| {
        fdfa::model::alexnet_bn(100, rng)
    });
}
