//! The statistics of a sweep: mean and sample standard deviation over seeds, the mean curve,
//! its best epoch, and the tables a paper prints (Markdown and CSV).
//!
//! Pure functions of the per-seed curves, so that `tests/sweep.rs` checks them on
//! hand-computed numbers and two sweeps that trained the same runs print the same bytes.

#![allow(dead_code)]

use std::fmt::Write as _;

/// The test curves of one seed: one value per epoch, epoch 1 first.
#[derive(Clone, Debug, PartialEq)]
pub struct SeedCurve {
    /// The seed.
    pub seed: u64,
    /// Test accuracy in percent, per epoch.
    pub accuracy: Vec<f64>,
    /// Test loss, per epoch.
    pub test_loss: Vec<f64>,
}

/// The runs of one (dataset, network, rule) cell of the grid.
#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    /// The dataset's name, e.g. `mnist`.
    pub dataset: String,
    /// The network's label, e.g. `FC-2`.
    pub network: String,
    /// The rule's name, e.g. `FDFA`.
    pub rule: String,
    /// One curve per finished seed, in seed order.
    pub curves: Vec<SeedCurve>,
}

/// A mean over seeds and its sample standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// The mean.
    pub mean: f64,
    /// The sample standard deviation (divisor n - 1); NaN for fewer than two values.
    pub std: f64,
}

/// The mean and the sample standard deviation (divisor `n - 1`) of `xs`: both NaN when `xs`
/// is empty, the standard deviation NaN for a single value (one seed says nothing about the
/// spread).
pub fn mean_std(xs: &[f64]) -> Stat {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return Stat {
            mean: f64::NAN,
            std: f64::NAN,
        };
    }
    let mean = xs.iter().sum::<f64>() / n;
    // Two passes: the deviations are summed after the mean is known, which keeps the
    // spread of nearly equal accuracies (96.94, 96.85, ...) free of cancellation.
    let std = if xs.len() < 2 {
        f64::NAN
    } else {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    };
    Stat { mean, std }
}

/// The mean curve over seeds with its band: entry `e` is the [`mean_std`] of the curves'
/// values at epoch `e + 1`, up to the shortest curve's length.
pub fn mean_curve(curves: &[&[f64]]) -> Vec<Stat> {
    let len = curves.iter().map(|c| c.len()).min().unwrap_or(0);
    (0..len)
        .map(|e| mean_std(&curves.iter().map(|c| c[e]).collect::<Vec<_>>()))
        .collect()
}

/// The epoch (from 1) at which the mean curve is highest, the first one on ties; `None` when
/// it has no finite value.
pub fn best_epoch(mean: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &m) in mean.iter().enumerate() {
        if m.is_finite() && best.is_none_or(|(_, b)| m > b) {
            best = Some((i + 1, m));
        }
    }
    best.map(|(e, _)| e)
}

/// The statistics at one reported epoch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AtEpoch {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Test accuracy (percent) over seeds; `None` when a curve is shorter.
    pub accuracy: Option<Stat>,
    /// Test loss over seeds; `None` when a curve is shorter.
    pub test_loss: Option<Stat>,
}

/// One line of the summary table.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The dataset.
    pub dataset: String,
    /// The network.
    pub network: String,
    /// The rule.
    pub rule: String,
    /// How many seeds the statistics are over.
    pub seeds: usize,
    /// The statistics at each reported epoch.
    pub at: Vec<AtEpoch>,
    /// The epoch of the mean accuracy curve's maximum, and the accuracy there.
    pub best: Option<(usize, Stat)>,
}

/// The summary rows of `groups` at `report_epochs` (epochs from 1).
pub fn summarize(groups: &[Group], report_epochs: &[usize]) -> Vec<Row> {
    groups
        .iter()
        .map(|g| {
            let acc: Vec<&[f64]> = g.curves.iter().map(|c| c.accuracy.as_slice()).collect();
            let loss: Vec<&[f64]> = g.curves.iter().map(|c| c.test_loss.as_slice()).collect();
            let (acc, loss) = (mean_curve(&acc), mean_curve(&loss));
            let at = report_epochs
                .iter()
                .map(|&epoch| AtEpoch {
                    epoch,
                    accuracy: epoch.checked_sub(1).and_then(|i| acc.get(i)).copied(),
                    test_loss: epoch.checked_sub(1).and_then(|i| loss.get(i)).copied(),
                })
                .collect();
            let means: Vec<f64> = acc.iter().map(|s| s.mean).collect();
            let best = best_epoch(&means).map(|e| (e, acc[e - 1]));
            Row {
                dataset: g.dataset.clone(),
                network: g.network.clone(),
                rule: g.rule.clone(),
                seeds: if acc.is_empty() { 0 } else { g.curves.len() },
                at,
                best,
            }
        })
        .collect()
}

/// `mean ± std` with `digits` decimals; the mean alone when there is no spread to show, and
/// `–` when there is nothing.
fn pm(s: Option<Stat>, digits: usize) -> String {
    match s {
        Some(s) if s.std.is_finite() => format!("{:.digits$} ± {:.digits$}", s.mean, s.std),
        Some(s) if s.mean.is_finite() => format!("{:.digits$}", s.mean),
        _ => "–".to_string(),
    }
}

/// The table a paper prints: per (dataset, network, rule), test accuracy (percent, two
/// decimals) and test loss (four decimals) as mean ± sample std over the seeds at each
/// reported epoch, the best epoch of the mean accuracy curve with its accuracy, and the
/// number of seeds.
pub fn markdown(rows: &[Row]) -> String {
    let epochs: Vec<usize> = rows
        .first()
        .map(|r| r.at.iter().map(|a| a.epoch).collect())
        .unwrap_or_default();
    let mut s = String::from("| dataset | network | rule | seeds |");
    for e in &epochs {
        let _ = write!(s, " test accuracy (%), epoch {e} | test loss, epoch {e} |");
    }
    s.push_str(" best epoch | test accuracy (%) at best |\n|---|---|---|---:|");
    for _ in &epochs {
        s.push_str("---:|---:|");
    }
    s.push_str("---:|---:|\n");
    for r in rows {
        let _ = write!(
            s,
            "| {} | {} | {} | {} |",
            r.dataset, r.network, r.rule, r.seeds
        );
        for a in &r.at {
            let _ = write!(s, " {} | {} |", pm(a.accuracy, 2), pm(a.test_loss, 4));
        }
        match r.best {
            Some((e, stat)) => {
                let _ = writeln!(s, " {e} | {} |", pm(Some(stat), 2));
            }
            None => s.push_str(" – | – |\n"),
        }
    }
    s
}

/// A number for the CSV: shortest round-trip form, empty when not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        String::new()
    }
}

/// The same statistics as [`markdown`], one line per (dataset, network, rule, reported
/// epoch), with every digit: `dataset,network,rule,seeds,epoch,accuracy_mean,accuracy_std,
/// test_loss_mean,test_loss_std,best_epoch,best_accuracy_mean,best_accuracy_std`. Fields
/// without a value (the std of one seed, an epoch past the curves) are empty.
pub fn csv(rows: &[Row]) -> String {
    let mut s = String::from(
        "dataset,network,rule,seeds,epoch,accuracy_mean,accuracy_std,test_loss_mean,\
         test_loss_std,best_epoch,best_accuracy_mean,best_accuracy_std\n",
    );
    let none = Stat {
        mean: f64::NAN,
        std: f64::NAN,
    };
    for r in rows {
        let (best_epoch, best) = match r.best {
            Some((e, stat)) => (e.to_string(), stat),
            None => (String::new(), none),
        };
        for a in &r.at {
            let (acc, loss) = (a.accuracy.unwrap_or(none), a.test_loss.unwrap_or(none));
            let _ = writeln!(
                s,
                "{},{},{},{},{},{},{},{},{},{},{},{}",
                r.dataset,
                r.network,
                r.rule,
                r.seeds,
                a.epoch,
                num(acc.mean),
                num(acc.std),
                num(loss.mean),
                num(loss.std),
                best_epoch,
                num(best.mean),
                num(best.std)
            );
        }
    }
    s
}
