//! Training and inference throughput of every (network, rule) pair, the GFLOP/s they reach
//! from counted multiply-adds, and the GFLOP/s of a bare matrixmultiply sgemm on the
//! networks' dominant shapes measured in the same run: the machine's own limit.
//!
//! ```text
//! cargo run --release --example throughput                       # FC-2, FC-3, CNN; all rules
//! cargo run --release --example throughput -- --networks alexnet --batch 16 --steps 3
//! ```
//!
//! Data is synthetic and already in memory, as in the reference's measurements. Figures are
//! medians over `--repeats` timings of `--steps` steps each; a table goes to stdout and a CSV
//! to `--csv`.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use fdfa::model::Model;
use fdfa::optim::{AdamConfig, Parameters};
use fdfa::rules::{Learned, RuleKind};
use fdfa::{Tensor, init};
use ndarray::Array2;
use ndarray::linalg::general_mat_mul;
use rayon::prelude::*;

#[derive(Parser, Debug)]
struct Args {
    /// Networks: fc2, fc3, cnn, alexnet.
    #[arg(long, value_delimiter = ',', default_value = "fc2,fc3,cnn")]
    networks: Vec<String>,
    /// Rules.
    #[arg(long, value_delimiter = ',', default_value = "BP,DFA,DKP,FDFA")]
    rules: Vec<String>,
    /// Training batch size.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Inference batch size.
    #[arg(long, default_value_t = 1000)]
    infer_batch: usize,
    /// Training steps per timing.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Timings per figure (the median is reported).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Also measure FC-2 and the CNN under FDFA and BP with 1 thread, for the scaling ratio.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    scaling: bool,
    /// Where to write the CSV.
    #[arg(long, default_value = "results/throughput.csv")]
    csv: PathBuf,
}

fn build(network: &str, rng: &mut init::Rng) -> fdfa::Result<Model> {
    match network {
        "fc2" => fdfa::model::fc(&[1, 28, 28], 2, 800, 10, rng),
        "fc3" => fdfa::model::fc(&[1, 28, 28], 3, 800, 10, rng),
        "cnn" => fdfa::model::shallow_cnn(&[1, 28, 28], 10, rng),
        "alexnet" => fdfa::model::alexnet_bn(100, rng),
        other => Err(fdfa::Error::InvalidConfig {
            layer: "throughput".into(),
            field: "networks",
            reason: format!("unknown network `{other}` (fc2, fc3, cnn, alexnet)"),
        }),
    }
}

/// Multiply-adds of one training step per sample for a rule: the forward pass, the tangent
/// pass after the first feedback point (FDFA, FG-A), the backward products each rule needs
/// (weight gradients everywhere; input gradients inside blocks, or across blocks for BP),
/// and the feedback products.
fn train_macs(model: &Model, kind: RuleKind) -> f64 {
    let mut shape = vec![1];
    shape.extend_from_slice(model.input_shape());
    let (mut fwd, mut tangent, mut backward) = (0usize, 0usize, 0usize);
    let mut seen_point = false;
    let classes = model.classes();
    let mut feedback = 0usize;
    for (b, block) in model.blocks().iter().enumerate() {
        for (j, layer) in block.layers().iter().enumerate() {
            let macs = layer.flops_per_sample(&shape);
            fwd += macs;
            if seen_point && matches!(kind, RuleKind::Fdfa | RuleKind::Fga) {
                tangent += macs;
            }
            let first_param_layer = b == 0 && j == 0;
            let input_grad = match kind {
                RuleKind::Bp => !first_param_layer,
                _ => j > 0,
            };
            backward += macs + if input_grad { macs } else { 0 };
            shape = layer.output_shape(&shape).unwrap_or_default();
        }
        if block.feedback().is_some() {
            seen_point = true;
            let d: usize = shape[1..].iter().product();
            feedback += match kind {
                RuleKind::Dfa => classes * d,
                RuleKind::Dkp | RuleKind::Fdfa => 2 * classes * d,
                _ => 0,
            };
        }
    }
    if kind == RuleKind::Fgw {
        backward = 0;
        tangent = fwd;
    }
    (fwd + tangent + backward + feedback) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    network: String,
    rule: String,
    threads: usize,
    train: f64,
    gflops: f64,
}

fn measure_training(network: &str, kind: RuleKind, args: &Args) -> fdfa::Result<(f64, f64)> {
    let mut rng = init::rng(1);
    let mut model = build(network, &mut rng)?;
    let mut rule = kind.build(&model, 1, &mut rng)?;
    let mut shape = vec![args.batch];
    shape.extend_from_slice(model.input_shape());
    let mut x = Tensor::zeros(&shape);
    init::fill_normal(x.data_mut(), &mut rng);
    let targets: Vec<usize> = (0..args.batch).map(|i| i % model.classes()).collect();
    let mut fwd = AdamConfig::default().with_lr(1e-4).init()?;
    let mut fb = AdamConfig::default().with_lr(1e-4).init()?;
    let mut step = |model: &mut Model| -> fdfa::Result<()> {
        rule.step(model, &x, &targets, &mut rng)?;
        fb.step(&mut Learned(rule.as_mut()));
        fwd.step(model as &mut dyn Parameters);
        Ok(())
    };
    for _ in 0..3 {
        step(&mut model)?;
    }
    let mut rates = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        for _ in 0..args.steps {
            step(&mut model)?;
        }
        rates.push((args.steps * args.batch) as f64 / start.elapsed().as_secs_f64());
    }
    let rate = median(rates);
    Ok((rate, rate * 2.0 * train_macs(&model, kind) / 1e9))
}

fn measure_inference(network: &str, args: &Args) -> fdfa::Result<f64> {
    let mut rng = init::rng(1);
    let mut model = build(network, &mut rng)?;
    let mut shape = vec![args.infer_batch];
    shape.extend_from_slice(model.input_shape());
    let mut x = Tensor::zeros(&shape);
    init::fill_normal(x.data_mut(), &mut rng);
    model.infer(&x)?;
    let mut rates = Vec::new();
    for _ in 0..args.repeats.max(3) {
        let start = Instant::now();
        model.infer(&x)?;
        rates.push(args.infer_batch as f64 / start.elapsed().as_secs_f64());
    }
    Ok(median(rates))
}

/// The dominant matrix products of a network at batch `n`, as (m, k, n).
fn dominant_shapes(network: &str, n: usize) -> Vec<(usize, usize, usize)> {
    match network {
        "fc2" | "fc3" => vec![(n, 784, 800), (n, 800, 800)],
        "cnn" => vec![(40, 375, 400), (n, 4000, 128)],
        _ => vec![(384, 1728, 169), (n, 9216, 4096)],
    }
}

/// GFLOP/s of bare sgemm on one shape, every worker thread multiplying its own matrices at
/// once: what the machine's cores deliver for that shape.
fn sgemm_gflops((m, k, n): (usize, usize, usize), repeats: usize) -> f64 {
    let threads = rayon::current_num_threads();
    let flops = 2.0 * (m * k * n) as f64;
    let reps = ((2e9 / flops) as usize).clamp(3, 2000);
    let mut rates = Vec::new();
    for _ in 0..repeats {
        let start = Instant::now();
        (0..threads).into_par_iter().for_each(|t| {
            let a = Array2::from_shape_fn((m, k), |(i, j)| ((i + j + t) % 7) as f32 * 0.1);
            let b = Array2::from_shape_fn((k, n), |(i, j)| ((i * j + t) % 5) as f32 * 0.1);
            let mut c = Array2::<f32>::zeros((m, n));
            for _ in 0..reps {
                general_mat_mul(1.0, &a, &b, 0.0, &mut c);
            }
        });
        rates.push(threads as f64 * reps as f64 * flops / start.elapsed().as_secs_f64() / 1e9);
    }
    median(rates)
}

fn in_pool<T: Send>(threads: usize, f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(threads).build() {
        Ok(pool) => pool.install(f),
        Err(_) => f(),
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> fdfa::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let rules: Vec<RuleKind> = args
        .rules
        .iter()
        .map(|r| r.parse())
        .collect::<fdfa::Result<_>>()?;
    println!(
        "{threads} thread(s), batch {}, median of {} timings of {} steps\n",
        args.batch, args.repeats, args.steps
    );
    let mut csv = String::from(
        "network,rule,threads,train_samples_per_s,train_gflops,sgemm_gflops,ratio_to_sgemm,infer_samples_per_s\n",
    );
    let mut rows: Vec<Row> = Vec::new();
    println!(
        "{:<8} {:<5} {:>14} {:>10} {:>12} {:>8} {:>14}",
        "network", "rule", "train samp/s", "GFLOP/s", "sgemm GFLOP/s", "ratio", "infer samp/s"
    );
    for network in &args.networks {
        let (sgemm, infer) = in_pool(threads, || {
            let shapes = dominant_shapes(network, args.batch);
            let sgemm = shapes
                .iter()
                .map(|&s| sgemm_gflops(s, 3))
                .fold(f64::INFINITY, f64::min);
            (sgemm, measure_inference(network, args))
        });
        let infer = infer?;
        for &kind in &rules {
            let (rate, gflops) = in_pool(threads, || measure_training(network, kind, args))?;
            println!(
                "{network:<8} {:<5} {rate:>14.0} {gflops:>10.1} {sgemm:>12.1} {:>8.2} {infer:>14.0}",
                kind.as_str(),
                gflops / sgemm
            );
            let _ = writeln!(
                csv,
                "{network},{kind},{threads},{rate:.1},{gflops:.2},{sgemm:.2},{:.3},{infer:.1}",
                gflops / sgemm
            );
            rows.push(Row {
                network: network.clone(),
                rule: kind.as_str().into(),
                threads,
                train: rate,
                gflops,
            });
        }
    }

    println!("\nRatios between rules (same run):");
    for network in &args.networks {
        let rate = |r: &str| {
            rows.iter()
                .find(|x| &x.network == network && x.rule == r && x.threads == threads)
                .map(|x| x.train)
        };
        if let (Some(bp), Some(fdfa)) = (rate("BP"), rate("FDFA")) {
            print!(
                "  {network}: FDFA/BP step time {:.2} (target <= 1.25)",
                bp / fdfa
            );
            if let Some(dfa) = rate("DFA") {
                print!(", DFA/BP step time {:.2} (target <= 0.8)", bp / dfa);
            }
            println!();
        }
    }

    if args.scaling && threads > 1 {
        println!("\nScaling, 1 thread vs {threads}:");
        let one = in_pool(1, || sgemm_gflops((args.batch, 800, 800), 3));
        let many = in_pool(threads, || sgemm_gflops((args.batch, 800, 800), 3));
        println!(
            "  bare sgemm {}x800x800: {one:.1} -> {many:.1} GFLOP/s ({:.2}x: how much the extra cores deliver)",
            args.batch,
            many / one
        );
        for network in args.networks.iter().filter(|n| *n != "alexnet") {
            for kind in [RuleKind::Bp, RuleKind::Fdfa]
                .into_iter()
                .filter(|k| rules.contains(k))
            {
                let (r1, g1) = in_pool(1, || measure_training(network, kind, args))?;
                let rn = rows
                    .iter()
                    .find(|x| &x.network == network && x.rule == kind.as_str())
                    .map_or(0.0, |x| x.train);
                println!(
                    "  {network} {kind}: {r1:.0} -> {rn:.0} samples/s ({:.2}x)",
                    rn / r1
                );
                let _ = writeln!(
                    csv,
                    "{network},{kind},1,{r1:.1},{g1:.2},{one:.2},{:.3},",
                    g1 / one
                );
                rows.push(Row {
                    network: network.clone(),
                    rule: kind.as_str().into(),
                    threads: 1,
                    train: r1,
                    gflops: g1,
                });
            }
        }
    }
    if let Some(dir) = args.csv.parent() {
        std::fs::create_dir_all(dir).map_err(|e| fdfa::Error::Io {
            path: dir.to_path_buf(),
            source: e,
        })?;
    }
    std::fs::write(&args.csv, csv).map_err(|e| fdfa::Error::Io {
        path: args.csv.clone(),
        source: e,
    })?;
    println!("\nCSV written to {}", args.csv.display());
    let _ = rows.iter().map(|r| r.gflops).sum::<f64>();
    Ok(())
}
