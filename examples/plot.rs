//! Plots training logs and alignment logs as PNG charts, one line per run.
//!
//! ```text
//! cargo run --release --example plot -- results/FDFA/*.csv results/DFA/*.csv --out plots/
//! ```
//!
//! Writes `accuracy.png` and `loss.png` (test accuracy, test and training loss per epoch),
//! and, for runs trained with `--measure-alignment`, `alignment_update.png`,
//! `alignment_feedback.png` and `alignment_variance.png` (per hidden layer). A training log's
//! alignment log (`<log>.alignment.csv`) is found beside it; giving it too is harmless.

mod plotting;

use std::path::PathBuf;

use clap::Parser;

/// Turns training and alignment CSV logs into PNG charts.
#[derive(Parser, Debug)]
struct Args {
    /// Training logs (`<log-dir>/<mode>/<timestamp>.csv`) and alignment logs.
    #[arg(required = true)]
    logs: Vec<PathBuf>,
    /// Folder for the PNG files.
    #[arg(long, default_value = "plots/")]
    out: PathBuf,
}

fn main() {
    let args = Args::parse();
    match plotting::plot_files(&args.logs, &args.out) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
