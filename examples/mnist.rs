//! Trains FC-n (default FC-2) or, with `--conv`, the shallow CNN on MNIST.
//!
//! ```text
//! cargo run --release --example mnist -- --train-mode FDFA --epochs 1
//! ```

mod common;

use fdfa::data::DatasetName;

fn main() {
    common::main_with(DatasetName::Mnist, Some(800), |args, rng| {
        if args.conv {
            fdfa::model::shallow_cnn(&[1, 28, 28], 10, rng)
        } else {
            fdfa::model::fc(&[1, 28, 28], args.n_layers, 800, 10, rng)
        }
    });
}
