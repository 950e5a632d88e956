//! Trains AlexNet with BatchNorm on CIFAR-100 (binary version, `cifar-100-binary`), with the
//! reference's augmentation (random resized crop to 224, horizontal flip).
//!
//! ```text
//! cargo run --release --example cifar100 -- --data-dir path/to/cifar-100-binary
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::run_reference(DatasetName::Cifar100);
}
