//! Turns training logs (`Epoch,Training Loss,Test Loss,Test Accuracy`) and alignment logs
//! (`<log>.alignment.csv`) into PNG charts, one line per run.
//!
//! Used by the `plot` example and by `tests/research`. Text is drawn with DejaVu Sans,
//! embedded by the `dejavu` crate and rendered by `ab_glyph`, so nothing is needed from the
//! system (no fontconfig, no freetype).

#![allow(dead_code)]

mod bands;
mod draw;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

// Only the sweep draws mean curves; the other users of this module do not.
#[allow(unused_imports)]
pub use bands::{MeanCurve, plot_mean_curves};
use draw::{COLORS, Chart, Line, draw, layer_shade};

/// What went wrong while plotting.
#[derive(Debug)]
pub enum PlotError {
    /// A file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A log does not have the expected columns or numbers.
    Parse {
        /// The file.
        path: PathBuf,
        /// The line (1-based).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The drawing backend failed.
    Draw {
        /// The chart being drawn.
        path: PathBuf,
        /// The backend's message.
        reason: String,
    },
    /// No training or alignment log among the inputs.
    NothingToPlot,
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Self::Parse { path, line, reason } => {
                write!(f, "{}:{line}: {reason}", path.display())
            }
            Self::Draw { path, reason } => write!(f, "drawing {}: {reason}", path.display()),
            Self::NothingToPlot => write!(f, "no training or alignment log to plot"),
        }
    }
}

impl std::error::Error for PlotError {}

/// One epoch of a training log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochRow {
    /// The epoch, from 1.
    pub epoch: f64,
    /// Mean training loss.
    pub train_loss: f64,
    /// Test loss.
    pub test_loss: f64,
    /// Test accuracy in percent.
    pub test_accuracy: f64,
}

/// One row of an alignment log.
#[derive(Clone, Debug, PartialEq)]
pub struct AlignRow {
    /// Fractional epochs of training before the measurement: `epoch - 1 + batch / batches`.
    pub time: f64,
    /// The feedback point, e.g. `fc_dfa.0`.
    pub point: String,
    /// Cosine of the main weight's update with BP's.
    pub update_cosine: f64,
    /// Cosine of the feedback matrix with the Jacobian (NaN when the rule has none).
    pub feedback_cosine: f64,
    /// Relative variance of the main weight's update.
    pub relative_variance: f64,
    /// Relative variance of the learned feedback's target (NaN when none).
    pub feedback_relative_variance: f64,
}

/// A run's logs, named after its training log (`FDFA/2026-01-01_00-00-00`).
#[derive(Clone, Debug, Default)]
pub struct Run {
    /// The legend entry.
    pub name: String,
    /// The training log's rows.
    pub epochs: Vec<EpochRow>,
    /// The alignment log's rows.
    pub alignment: Vec<AlignRow>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PlotError + '_ {
    move |source| PlotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `<parent folder>/<stem>` of a training log, the stem alone when it has no parent.
fn run_name(training_log: &Path) -> String {
    let stem = training_log
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match training_log.parent().and_then(|p| p.file_name()) {
        Some(parent) => format!("{}/{stem}", parent.to_string_lossy()),
        None => stem,
    }
}

/// The training log an alignment log belongs to (`x.alignment.csv` -> `x.csv`).
fn training_log_of(alignment_log: &Path) -> PathBuf {
    let name = alignment_log
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base = name.strip_suffix(".alignment.csv").unwrap_or(&name);
    alignment_log.with_file_name(format!("{base}.csv"))
}

fn is_alignment_log(path: &Path) -> bool {
    path.to_string_lossy().ends_with(".alignment.csv")
}

fn number(path: &Path, line: usize, field: Option<&str>, what: &str) -> Result<f64, PlotError> {
    let parse_error = |reason: String| PlotError::Parse {
        path: path.to_path_buf(),
        line,
        reason,
    };
    match field.map(str::trim) {
        None => Err(parse_error(format!("missing column `{what}`"))),
        // Empty fields are values the run does not have (no feedback matrices).
        Some("") => Ok(f64::NAN),
        Some(f) => f
            .parse()
            .map_err(|e| parse_error(format!("`{what}` = `{f}`: {e}"))),
    }
}

/// Reads a training log.
///
/// # Errors
/// [`PlotError::Io`] or [`PlotError::Parse`].
pub fn read_training_log(path: &Path) -> Result<Vec<EpochRow>, PlotError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut f = line.split(',');
        let mut next = |what| number(path, i + 1, f.next(), what);
        rows.push(EpochRow {
            epoch: next("Epoch")?,
            train_loss: next("Training Loss")?,
            test_loss: next("Test Loss")?,
            test_accuracy: next("Test Accuracy")?,
        });
    }
    Ok(rows)
}

/// Reads an alignment log, finding its columns by name.
///
/// # Errors
/// [`PlotError::Io`] or [`PlotError::Parse`] (a missing column, a field that is not a
/// number).
pub fn read_alignment_log(path: &Path) -> Result<Vec<AlignRow>, PlotError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| PlotError::Parse {
                path: path.to_path_buf(),
                line: 1,
                reason: format!("no column `{name}`"),
            })
    };
    let names = [
        "epoch",
        "batch",
        "batches",
        "point",
        "update_cosine",
        "feedback_cosine",
        "relative_variance",
        "feedback_relative_variance",
    ];
    let mut cols = [0usize; 8];
    for (c, name) in cols.iter_mut().zip(names) {
        *c = column(name)?;
    }
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        let get = |k: usize| number(path, i + 2, f.get(cols[k]).copied(), names[k]);
        let (epoch, batch, batches) = (get(0)?, get(1)?, get(2)?);
        rows.push(AlignRow {
            time: epoch - 1.0 + batch / batches.max(1.0),
            point: f.get(cols[3]).copied().unwrap_or_default().to_string(),
            update_cosine: get(4)?,
            feedback_cosine: get(5)?,
            relative_variance: get(6)?,
            feedback_relative_variance: get(7)?,
        });
    }
    Ok(rows)
}

/// Gathers the runs of the given logs: every training log with its alignment log when one
/// lies beside it, and alignment logs given alone.
///
/// # Errors
/// As the readers.
pub fn read_runs(paths: &[PathBuf]) -> Result<Vec<Run>, PlotError> {
    let mut runs: BTreeMap<PathBuf, Run> = BTreeMap::new();
    for path in paths {
        let (training, alignment) = if is_alignment_log(path) {
            (training_log_of(path), path.clone())
        } else {
            (path.clone(), path.with_extension("alignment.csv"))
        };
        if runs.contains_key(&training) {
            continue;
        }
        let mut run = Run {
            name: run_name(&training),
            ..Run::default()
        };
        if training.exists() {
            run.epochs = read_training_log(&training)?;
        }
        if alignment.exists() {
            run.alignment = read_alignment_log(&alignment)?;
        }
        runs.insert(training, run);
    }
    Ok(runs.into_values().collect())
}

/// Writes the charts of `runs` into `out`: `accuracy.png` and `loss.png` when there are
/// training logs, and `alignment_update.png`, `alignment_feedback.png` and
/// `alignment_variance.png` when there are alignment logs. Returns the files written.
///
/// # Errors
/// [`PlotError::NothingToPlot`] when no run has rows; [`PlotError::Io`] when `out` cannot be
/// created; [`PlotError::Draw`] when a chart cannot be drawn.
pub fn plot_runs(runs: &[Run], out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut written = Vec::new();
    let color = |i: usize| COLORS[i % COLORS.len()];
    // A run keeps its colour on every chart: the colour of its place among all runs.
    let trained: Vec<(usize, &Run)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.epochs.is_empty())
        .collect();
    if !trained.is_empty() {
        let line = |i: usize, r: &Run, label: String, dashed, f: fn(&EpochRow) -> f64| Line {
            label,
            color: color(i),
            dashed,
            points: r.epochs.iter().map(|e| (e.epoch, f(e))).collect(),
        };
        let epochs = trained
            .iter()
            .map(|(_, r)| r.epochs.len())
            .max()
            .unwrap_or(1);
        // Whole epochs only: one label per epoch up to 12, fewer beyond.
        let x_labels = epochs.clamp(2, 12);
        let accuracy = Chart {
            title: "Test accuracy",
            x_desc: "epoch",
            y_desc: "test accuracy (%)",
            y_range: None,
            log_y: false,
            x_labels,
            lines: trained
                .iter()
                .map(|&(i, r)| line(i, r, r.name.clone(), false, |e| e.test_accuracy))
                .collect(),
        };
        let path = out.join("accuracy.png");
        draw(&path, &accuracy)?;
        written.push(path);
        let mut lines = Vec::new();
        for &(i, r) in &trained {
            lines.push(line(i, r, format!("{} test", r.name), false, |e| {
                e.test_loss
            }));
            lines.push(line(i, r, format!("{} train", r.name), true, |e| {
                e.train_loss
            }));
        }
        let loss = Chart {
            title: "Loss (solid: test, dashed: training)",
            x_desc: "epoch",
            y_desc: "cross-entropy",
            y_range: None,
            log_y: false,
            x_labels,
            lines,
        };
        let path = out.join("loss.png");
        draw(&path, &loss)?;
        written.push(path);
    }
    let measured: Vec<(usize, &Run)> = runs
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.alignment.is_empty())
        .collect();
    if !measured.is_empty() {
        let charts = [
            AlignChart {
                file: "alignment_update.png",
                title: "Cosine of the hidden weights' update with BP's",
                y_desc: "cosine",
                log_y: false,
                value: |a| a.update_cosine,
            },
            AlignChart {
                file: "alignment_feedback.png",
                title: "Cosine of the feedback matrix with the mean Jacobian",
                y_desc: "cosine",
                log_y: false,
                value: |a| a.feedback_cosine,
            },
            AlignChart {
                file: "alignment_variance.png",
                title: "Relative variance over direction draws (solid: update, dashed: feedback)",
                y_desc: "variance / |mean|^2",
                log_y: true,
                value: |a| a.relative_variance,
            },
        ];
        for AlignChart {
            file,
            title,
            y_desc,
            log_y,
            value: f,
        } in charts
        {
            let mut lines = Vec::new();
            for &(i, r) in &measured {
                let mut points: BTreeMap<&str, Vec<&AlignRow>> = BTreeMap::new();
                for a in &r.alignment {
                    points.entry(&a.point).or_default().push(a);
                }
                for (j, (point, rows)) in points.into_iter().enumerate() {
                    // Layers of a run share its colour; deeper layers are dashed (on the
                    // variance chart, dashes mark the feedback's variance instead).
                    let mut add = |label: String, dashed, g: fn(&AlignRow) -> f64| {
                        let pts: Vec<(f64, f64)> = rows.iter().map(|a| (a.time, g(a))).collect();
                        if pts.iter().any(|p| p.1.is_finite() && (!log_y || p.1 > 0.0)) {
                            lines.push(Line {
                                label,
                                color: layer_shade(color(i), j),
                                dashed,
                                points: pts,
                            });
                        }
                    };
                    if log_y {
                        add(format!("{} {point} update", r.name), false, f);
                        add(format!("{} {point} feedback", r.name), true, |a| {
                            a.feedback_relative_variance
                        });
                    } else {
                        add(format!("{} {point}", r.name), j % 2 == 1, f);
                    }
                }
            }
            if lines.is_empty() {
                continue;
            }
            let chart = Chart {
                title,
                x_desc: "epoch",
                y_desc,
                y_range: (!log_y).then_some((-0.1, 1.02)),
                log_y,
                x_labels: 10,
                lines,
            };
            let path = out.join(file);
            draw(&path, &chart)?;
            written.push(path);
        }
    }
    if written.is_empty() {
        return Err(PlotError::NothingToPlot);
    }
    Ok(written)
}

/// One chart of the alignment logs.
struct AlignChart {
    file: &'static str,
    title: &'static str,
    y_desc: &'static str,
    log_y: bool,
    value: fn(&AlignRow) -> f64,
}

/// Reads the logs at `paths` and writes their charts into `out` ([`plot_runs`]).
///
/// # Errors
/// As [`read_runs`] and [`plot_runs`].
pub fn plot_files(paths: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>, PlotError> {
    plot_runs(&read_runs(paths)?, out)
}
