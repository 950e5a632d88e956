//! Forward-mode AD, the crate's own: the Jacobian-vector product of a whole network's output
//! along input directions, computed exactly in the same pass as the output.
//!
//! It builds a small CNN, trains its BatchNorm statistics for a few batches, then computes
//! the Jacobian of the logits with respect to one input image column by column (every
//! column is the JVP along one pixel's unit direction; all of them go through the network
//! at once as `k` directions), checks every column against central differences of the
//! inference map, and prints the worst disagreement.
//!
//! ```sh
//! cargo run --release --example jvp
//! ```

use fdfa::Tensor;
use fdfa::model::{Mode, Sequential};

fn main() -> fdfa::Result<()> {
    let mut rng = fdfa::init::rng(1);
    let mut model = Sequential::new(&[1, 8, 8])
        .conv2d(4, 3)
        .batch_norm()
        .relu()
        .max_pool(2, 2)
        .feedback()
        .flatten()
        .linear(16)
        .relu()
        .feedback()
        .linear(3)
        .build(&mut rng)?;
    let image = |seed: usize| -> fdfa::Result<Tensor> {
        let values = (0..64)
            .map(|i| (((i * 37 + seed * 101) % 97) as f32 / 48.0) - 1.0)
            .collect();
        Tensor::from_vec(&[1, 1, 8, 8], values)
    };
    // A few training forwards give BatchNorm running statistics of its own.
    let mut batch = Vec::new();
    for s in 0..16 {
        batch.extend_from_slice(image(s)?.data());
    }
    let batch = Tensor::from_vec(&[16, 1, 8, 8], batch)?;
    for _ in 0..5 {
        model.forward_train(&batch, &mut |_, _| Ok(()))?;
    }

    // All 64 unit directions at once: k = 64 tangents of one sample.
    let x = image(100)?;
    let mut basis = vec![0.0; 64 * 64];
    for i in 0..64 {
        basis[i * 64 + i] = 1.0;
    }
    let directions = Tensor::from_vec(&[64, 1, 1, 8, 8], basis)?;
    let (logits, jacobian) = model.jvp(&x, &directions, Mode::Eval)?;
    println!("logits {:?}", logits.data());
    println!(
        "Jacobian: {} columns (one per pixel) of {} logits",
        jacobian.shape()[0],
        jacobian.shape()[2]
    );

    // Central differences of the inference map, one pixel at a time.
    let h = 1e-3;
    let (mut worst, mut scale) = (0.0f32, 0.0f32);
    for i in 0..64 {
        let nudged = |s: f32| -> fdfa::Result<Tensor> {
            let mut v = x.data().to_vec();
            v[i] += s * h;
            model.logits(&Tensor::from_vec(&[1, 1, 8, 8], v)?)
        };
        let (up, down) = (nudged(1.0)?, nudged(-1.0)?);
        for o in 0..3 {
            let fd = (up.data()[o] - down.data()[o]) / (2.0 * h);
            let exact = jacobian.data()[i * 3 + o];
            worst = worst.max((fd - exact).abs());
            scale = scale.max(exact.abs());
        }
    }
    println!("largest |d logit / d pixel|: {scale:.4}");
    println!("worst |JVP - central difference|: {worst:.2e}");
    let ok = worst <= 1e-2 * scale;
    println!("agreement: {}", if ok { "ok" } else { "FAILED" });
    if ok { Ok(()) } else { std::process::exit(1) }
}
