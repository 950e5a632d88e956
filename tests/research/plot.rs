//! The `plot` example's code turns the logs the library writes into PNG files.

#[path = "../../examples/plotting/mod.rs"]
mod plotting;

use std::path::{Path, PathBuf};

use fdfa::diagnostics::{AlignmentLog, AlignmentRow, LayerAlignment, alignment_log_path};
use fdfa::train::{CsvLog, EpochRecord};

/// A fresh folder under the system's temporary folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fdfa-research-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A training log of three epochs and, with `measured`, its alignment log.
fn write_run(dir: &Path, mode: &str, offset: f64, measured: bool) -> fdfa::Result<PathBuf> {
    let path = dir.join(mode).join("run.csv");
    let mut log = CsvLog::open(&path)?;
    for epoch in 1..=3 {
        let e = epoch as f64;
        log.append(&EpochRecord {
            epoch,
            train_loss: 0.5 / e + offset,
            test_loss: 0.4 / e + offset,
            test_accuracy: 90.0 + 2.0 * e - 10.0 * offset,
        })?;
    }
    if measured {
        let mut alignment = AlignmentLog::open(alignment_log_path(&path))?;
        let mut rows = Vec::new();
        for epoch in 1..=3 {
            for batch in [100, 200] {
                for layer in 0..2 {
                    let t = (epoch - 1) as f64 + batch as f64 / 250.0;
                    rows.push(AlignmentRow {
                        epoch,
                        batch,
                        batches: 250,
                        alignment: LayerAlignment {
                            layer,
                            point: format!("fc_dfa.{layer}"),
                            weight: format!("fc_hidden.{layer}.weight"),
                            update_cosine: 0.9 - 0.3 / (1.0 + t) - 0.1 * layer as f64,
                            block_cosine: 0.9,
                            feedback_cosine: Some(0.95 - 0.5 / (1.0 + t)),
                            variance: 0.0,
                            relative_variance: 0.0,
                            feedback_variance: Some(1.0),
                            feedback_relative_variance: Some(20.0 / (1.0 + t)),
                        },
                    });
                }
            }
        }
        alignment.append(&rows)?;
    }
    Ok(path)
}

/// Whether `path` is a PNG of the chart size with a body.
fn assert_png(path: &Path) {
    let bytes = std::fs::read(path).unwrap_or_default();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    let width = u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]);
    let height = u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    assert_eq!((width, height), (1600, 800));
    // A blank 1600x800 image compresses to a few kilobytes; lines and text take more.
    assert!(
        bytes.len() > 20_000,
        "{}: {} bytes",
        path.display(),
        bytes.len()
    );
}

#[test]
fn plot_writes_png_charts_for_training_and_alignment_logs() -> Result<(), Box<dyn std::error::Error>>
{
    let dir = scratch("plot");
    let fdfa = write_run(&dir, "FDFA", 0.0, true)?;
    let dfa = write_run(&dir, "DFA", 0.1, true)?;
    let bp = write_run(&dir, "BP", 0.05, false)?;
    let out = dir.join("plots");
    // The alignment log given beside its training log is read once.
    let inputs = [fdfa.clone(), alignment_log_path(&fdfa), dfa, bp];
    let files = plotting::plot_files(&inputs, &out)?;
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        [
            "accuracy.png",
            "loss.png",
            "alignment_update.png",
            "alignment_feedback.png",
            "alignment_variance.png"
        ]
    );
    for f in &files {
        assert_png(f);
    }
    let runs = plotting::read_runs(&inputs)?;
    assert_eq!(runs.len(), 3);
    assert_eq!(runs[0].name, "BP/run");
    assert_eq!(runs[2].alignment.len(), 12);
    assert!((runs[2].alignment[2].time - 0.8).abs() < 1e-12);

    // Nothing readable to plot is an error, not an empty folder.
    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "Epoch,Training Loss,Test Loss,Test Accuracy\n")?;
    assert!(matches!(
        plotting::plot_files(&[empty], &dir.join("none")),
        Err(plotting::PlotError::NothingToPlot)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
