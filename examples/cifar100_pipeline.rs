//! How much of AlexNet's CIFAR-100 epoch the input pipeline takes (random resized crop to
//! 224, horizontal flip, normalisation: `Augmented::fill_batch`), next to the training step.
//!
//! With `--write`, first writes CIFAR-100 binary files in the official layout (`train.bin`:
//! 50,000 records, `test.bin`: 10,000; each one coarse label byte, one fine label byte and
//! 3,072 pixel bytes, channel-major) with patterned pixels into `--data-dir`, since the
//! data set is not shipped. Then it runs `--batches` training batches the way
//! `Trainer::train_epoch` does (fill the batch, then step), timing the two parts apart, and
//! prints the pipeline's share of the time. `scripts/cifar100_epoch.sh` runs it and the
//! `cifar100` example's real epoch on those files.
//!
//! ```text
//! cargo run --release --example cifar100_pipeline -- --data-dir cifar-scratch/cifar-100-binary \
//!     --write --batches 12 --threads 2
//! ```

use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use fdfa::data::{Augmented, CIFAR100_SIZE, DataSource};
use fdfa::rules::RuleKind;
use fdfa::train::{TrainConfig, Trainer};

#[derive(Parser, Debug)]
struct Args {
    /// Folder of `train.bin` and `test.bin`.
    #[arg(long)]
    data_dir: PathBuf,
    /// Write the two files first (patterned pixels, labels cycling through the classes).
    #[arg(long)]
    write: bool,
    /// Training batches to time (the first one, which grows every buffer, is not counted).
    #[arg(long, default_value_t = 12)]
    batches: usize,
    /// Samples per batch (the reference's 64).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Learning rule.
    #[arg(long, default_value = "FDFA")]
    train_mode: String,
}

/// Records of the official files: one coarse label, one fine label, 32 x 32 x 3 pixels.
const RECORD: usize = 2 + 3072;

/// Writes `records` records: fine label `i % 100`, coarse label `fine / 5`, and pixels from
/// a per-record linear congruential sequence, so that every image differs.
fn write_records(path: &Path, records: usize) -> std::io::Result<()> {
    let mut out = BufWriter::new(fs::File::create(path)?);
    let mut record = [0u8; RECORD];
    for i in 0..records {
        let fine = (i % 100) as u8;
        record[0] = fine / 5;
        record[1] = fine;
        let mut state = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(12_345);
        for p in &mut record[2..] {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *p = (state >> 24) as u8;
        }
        out.write_all(&record)?;
    }
    out.flush()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()?;
    }
    if args.write {
        fs::create_dir_all(&args.data_dir)?;
        let start = Instant::now();
        write_records(&args.data_dir.join("train.bin"), 50_000)?;
        write_records(&args.data_dir.join("test.bin"), 10_000)?;
        println!(
            "wrote train.bin (50,000 records) and test.bin (10,000) to {} in {:.1} s",
            args.data_dir.display(),
            start.elapsed().as_secs_f64()
        );
    }
    let (train, _) = fdfa::data::load_cifar100(&args.data_dir)?;
    let train = Augmented::train(train, CIFAR100_SIZE)?;
    let rule: RuleKind = args.train_mode.parse()?;
    let mut rng = fdfa::init::rng(1);
    let model = fdfa::model::alexnet_bn(100, &mut rng)?;
    let rule = rule.build(&model, 1, &mut rng)?;
    let config = TrainConfig::default().with_batch_size(args.batch_size);
    let mut trainer = Trainer::new(model, rule, config)?;

    let bs = args.batch_size;
    let mut shape = vec![bs];
    shape.extend_from_slice(train.sample_shape());
    let mut x = fdfa::Tensor::zeros(&shape);
    let mut targets = vec![0; bs];
    // A fixed spread of the training set rather than its first samples.
    let stride = train.len() / (bs * args.batches.max(1)).max(1);
    let (mut fill, mut step) = (Duration::ZERO, Duration::ZERO);
    for b in 0..=args.batches {
        let indices: Vec<usize> = (0..bs)
            .map(|j| ((b * bs + j) * stride.max(1)) % train.len())
            .collect();
        let t0 = Instant::now();
        train.fill_batch(&indices, b as u64, x.data_mut(), &mut targets)?;
        let t1 = Instant::now();
        trainer.train_batch(&x, &targets)?;
        let t2 = Instant::now();
        if b > 0 {
            fill += t1 - t0;
            step += t2 - t1;
        }
    }
    let n = args.batches.max(1) as f64;
    let per_batch = millis(fill + step) / n;
    println!(
        "AlexNet {}, batch {bs}, {} threads, {} batches: pipeline {:.1} ms, step {:.1} ms \
         per batch; pipeline share {:.2}% ({:.1} samples/s; an epoch of 50,000 samples \
         ~{:.1} min)",
        args.train_mode,
        rayon::current_num_threads(),
        args.batches,
        millis(fill) / n,
        millis(step) / n,
        100.0 * fill.as_secs_f64() / (fill + step).as_secs_f64(),
        bs as f64 / (per_batch / 1e3),
        50_000.0 / (bs as f64 / (per_batch / 1e3)) / 60.0
    );
    Ok(())
}
