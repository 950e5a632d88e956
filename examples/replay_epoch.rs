//! Training epochs from a given initial state, in a given batch order: the check that fdfa
//! and another implementation (the PyTorch reference) follow the same trajectory when they
//! start from the same weights and see the same batches.
//!
//! ```text
//! cargo run --release --example replay_epoch -- --init init.safetensors --order order.txt \
//!     --dataset mnist --network fc2 --rule BP
//! ```
//!
//! `--init` is a safetensors file with the network's state under PyTorch's `state_dict`
//! names (as `safetensors.torch.save_file(model.state_dict())` writes it), with the
//! feedback matrices `<point>.feedbacks` for DFA (DKP and FDFA start from zeros when they are
//! left out); `--order` lists training-sample
//! indices, one per line, batched in that order: `--epochs` equal parts, one per epoch (the
//! last batch of each short). The settings are the reference's defaults (batch 64, Adam 1e-4,
//! b_lr 1e-4, the forward learning rate times 0.95 after every epoch). Prints one JSON line
//! per epoch: the epoch's training loss and the test loss and accuracy after it (and before
//! the first). Under BP, DFA and DKP the run is then fully determined, so two implementations
//! should agree up to float32 rounding; FDFA's random directions still differ.
//! `benches/pytorch/replay_epoch.py` runs the reference and this example on the same start.

use std::path::{Path, PathBuf};

use clap::Parser;
use fdfa::Tensor;
use fdfa::data::{DataSource, DatasetName, load_raw};
use fdfa::model::Model;
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::load_model;
use fdfa::train::{TrainConfig, Trainer};

/// Training epochs from a given state in a given batch order.
#[derive(Parser, Debug)]
struct Args {
    /// The initial state: a safetensors file with PyTorch's `state_dict` names.
    #[arg(long)]
    init: PathBuf,
    /// The order: training-sample indices, one per line, `--epochs` equal parts.
    #[arg(long)]
    order: PathBuf,
    /// Epochs: the order's parts.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: u64,
    /// mnist or fashion-mnist.
    #[arg(long, default_value = "mnist")]
    dataset: String,
    /// The dataset's folder (default: where the dataset examples look).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// fc1, fc2, ... or cnn.
    #[arg(long, default_value = "fc2")]
    network: String,
    /// BP, DFA, DKP or FDFA.
    #[arg(long, default_value = "BP")]
    rule: String,
    /// Training batch size.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    threads: u64,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), String> {
    let dataset: DatasetName = args
        .dataset
        .parse()
        .map_err(|e: fdfa::Error| e.to_string())?;
    if !matches!(dataset, DatasetName::Mnist | DatasetName::FashionMnist) {
        return Err(format!("--dataset {dataset}: mnist or fashion-mnist"));
    }
    let rule: RuleKind = args.rule.parse().map_err(|e: fdfa::Error| e.to_string())?;
    if !matches!(
        rule,
        RuleKind::Bp | RuleKind::Dfa | RuleKind::Dkp | RuleKind::Fdfa
    ) {
        return Err(format!(
            "--rule {rule}: the reference's rules are BP, DFA, DKP and FDFA"
        ));
    }
    let order = read_order(&args.order)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads as usize)
        .build_global()
        .map_err(|e| e.to_string())?;
    let (train, test) = load_raw(dataset, args.data_dir.as_deref()).map_err(|e| e.to_string())?;
    // The generator only fills values that the initial state then replaces.
    let mut rng = fdfa::init::rng(0);
    let mut model = network(&args.network, &mut rng)?;
    load_model(&args.init, &mut model).map_err(|e| e.to_string())?;
    let mut learning = rule.build(&model, 1, &mut rng).map_err(|e| e.to_string())?;
    if let Some(feedback) = learning.feedback_mut() {
        // DKP and FDFA start from zeros in the reference, so the file may leave their
        // matrices out; DFA's random ones must be in it.
        let names = feedback.names().to_vec();
        let tensors = read_tensors(&args.init, &names)?;
        for (l, (name, t)) in names.iter().zip(tensors).enumerate() {
            match t {
                Some(t) => feedback.set(l, &t).map_err(|e| format!("{name}: {e}"))?,
                None if rule == RuleKind::Dfa => {
                    return Err(format!(
                        "{}: no tensor `{name}` (DFA's feedback matrices are random: the \
                         replay needs the ones the other side started from)",
                        args.init.display()
                    ));
                }
                None => {}
            }
        }
    }
    let config = TrainConfig::default().with_batch_size(args.batch_size as usize);
    let mut trainer = Trainer::new(model, learning, config).map_err(|e| e.to_string())?;
    let (loss0, acc0) = trainer.evaluate(&test).map_err(|e| e.to_string())?;
    let epochs = args.epochs as usize;
    if order.len() % epochs != 0 {
        return Err(format!(
            "{}: {} indices do not split into {epochs} equal epochs",
            args.order.display(),
            order.len()
        ));
    }
    let shape = trainer.model().input_shape().to_vec();
    for (e, part) in order.chunks(order.len() / epochs).enumerate() {
        let (mut sum, mut batches) = (0.0f64, 0usize);
        for indices in part.chunks(args.batch_size as usize) {
            let mut dims = vec![indices.len()];
            dims.extend_from_slice(&shape);
            let mut x = Tensor::zeros(&dims);
            let mut targets = vec![0; indices.len()];
            train
                .fill_batch(indices, 0, x.data_mut(), &mut targets)
                .map_err(|e| e.to_string())?;
            sum += f64::from(
                trainer
                    .train_batch(&x, &targets)
                    .map_err(|e| e.to_string())?,
            );
            batches += 1;
        }
        // Evaluates, then decays the forward learning rate as the reference's scheduler does.
        let record = trainer
            .finish_epoch(sum / batches as f64, &test)
            .map_err(|e| e.to_string())?;
        let line = serde_json::json!({
            "epoch": e + 1,
            "initial_test_loss": loss0,
            "initial_test_accuracy": acc0,
            "train_loss": record.train_loss,
            "test_loss": record.test_loss,
            "test_accuracy": record.test_accuracy,
            "batches": batches,
        });
        println!("{line}");
    }
    Ok(())
}

fn network(name: &str, rng: &mut fdfa::init::Rng) -> Result<Model, String> {
    let input = [1, 28, 28];
    let model = match name {
        "cnn" => fdfa::model::shallow_cnn(&input, 10, rng),
        _ => match name
            .strip_prefix("fc")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if (1..=16).contains(&n) => fdfa::model::fc(&input, n, 800, 10, rng),
            _ => return Err(format!("--network {name}: fc1 to fc16, or cnn")),
        },
    };
    model.map_err(|e| e.to_string())
}

fn read_order(path: &Path) -> Result<Vec<usize>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let order = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            l.trim()
                .parse::<usize>()
                .map_err(|e| format!("{} line {}: {e}", path.display(), i + 1))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if order.is_empty() {
        return Err(format!("{}: no index", path.display()));
    }
    Ok(order)
}

/// Reads the float32 tensors `names` from a safetensors file (`None` for a name it lacks).
fn read_tensors(path: &Path, names: &[String]) -> Result<Vec<Option<Tensor>>, String> {
    let err = |m: String| format!("{}: {m}", path.display());
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let len = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) as usize)
        .ok_or_else(|| err("shorter than a safetensors header".into()))?;
    let header = bytes
        .get(8..8usize.saturating_add(len))
        .ok_or_else(|| err("truncated header".into()))?;
    let header: serde_json::Value =
        serde_json::from_slice(header).map_err(|e| err(e.to_string()))?;
    let data = &bytes[8 + len..];
    names
        .iter()
        .map(|name| {
            let Some(entry) = header.get(name) else {
                return Ok(None);
            };
            if entry["dtype"] != "F32" {
                return Err(err(format!("`{name}` is not F32")));
            }
            let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone())
                .map_err(|e| err(format!("`{name}`: {e}")))?;
            let offsets: [usize; 2] = serde_json::from_value(entry["data_offsets"].clone())
                .map_err(|e| err(format!("`{name}`: {e}")))?;
            let raw = data
                .get(offsets[0]..offsets[1])
                .filter(|r| r.len() == 4 * shape.iter().product::<usize>())
                .ok_or_else(|| err(format!("`{name}`: bad offsets")))?;
            let values = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Tensor::from_vec(&shape, values)
                .map(Some)
                .map_err(|e| err(format!("`{name}`: {e}")))
        })
        .collect()
}
