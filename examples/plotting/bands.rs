//! Mean curves over seeds, each with a shaded band of ± one standard deviation.

use std::path::Path;

use super::PlotError;
use super::draw::{Band, COLORS, Chart, Line, draw_with_bands};

/// One mean curve and its spread: `(epoch, mean, std)` per point. A NaN std (a single seed)
/// draws no band at that point.
#[derive(Clone, Debug, PartialEq)]
pub struct MeanCurve {
    /// The legend entry.
    pub label: String,
    /// `(epoch, mean, standard deviation)`, by epoch.
    pub points: Vec<(f64, f64, f64)>,
}

/// Draws `curves` into the PNG at `path`: each mean as a line with markers, and under it its
/// band from mean - std to mean + std in the same colour, lighter.
///
/// # Errors
/// [`PlotError::NothingToPlot`] when no curve has a point; [`PlotError::Io`] when the folder
/// of `path` cannot be created; [`PlotError::Draw`] when the backend fails.
pub fn plot_mean_curves(
    curves: &[MeanCurve],
    path: &Path,
    title: &str,
    y_desc: &str,
) -> Result<(), PlotError> {
    if curves.iter().all(|c| c.points.is_empty()) {
        return Err(PlotError::NothingToPlot);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| PlotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let color = |i: usize| COLORS[i % COLORS.len()];
    let epochs = curves.iter().map(|c| c.points.len()).max().unwrap_or(1);
    let chart = Chart {
        title,
        x_desc: "epoch",
        y_desc,
        y_range: None,
        log_y: false,
        x_labels: epochs.clamp(2, 12),
        lines: curves
            .iter()
            .enumerate()
            .map(|(i, c)| Line {
                label: c.label.clone(),
                color: color(i),
                dashed: false,
                points: c.points.iter().map(|p| (p.0, p.1)).collect(),
            })
            .collect(),
    };
    let bands: Vec<Band> = curves
        .iter()
        .enumerate()
        .map(|(i, c)| Band {
            color: color(i),
            points: c
                .points
                .iter()
                .map(|&(x, m, s)| {
                    let s = if s.is_finite() { s } else { 0.0 };
                    (x, m - s, m + s)
                })
                .collect(),
        })
        .collect();
    draw_with_bands(path, &chart, &bands)
}
