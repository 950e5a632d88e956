//! Trains FC-n (default FC-2) or, with `--conv`, the shallow CNN on MNIST.
//!
//! ```text
//! cargo run --release --example mnist -- --train-mode FDFA --epochs 1
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::run_reference(DatasetName::Mnist);
}
