//! Trains FC-n (default FC-2) or, with `--conv`, the shallow CNN on Fashion-MNIST
//! (`apt-get install dataset-fashion-mnist`, or `--data-dir`).
//!
//! ```text
//! cargo run --release --example fashion_mnist -- --train-mode FDFA --epochs 1
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::run_reference(DatasetName::FashionMnist);
}
