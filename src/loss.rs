//! Mean softmax cross-entropy: value, gradient with respect to the logits, and JVP.

use crate::error::{Error, Result};
use crate::tensor::Tensor;

fn check(logits: &Tensor, targets: &[usize]) -> Result<(usize, usize)> {
    let shape = logits.shape();
    if shape.len() != 2 || shape[0] == 0 || shape[1] == 0 || targets.len() != shape[0] {
        return Err(Error::shape(
            "cross_entropy",
            format!("logits [N, C] with N = {} targets", targets.len()),
            shape,
        ));
    }
    let c = shape[1];
    if let Some((i, &t)) = targets.iter().enumerate().find(|&(_, &t)| t >= c) {
        return Err(Error::LabelOutOfRange {
            context: "cross_entropy".into(),
            label: t,
            index: i,
            classes: c,
        });
    }
    Ok((shape[0], c))
}

/// The maximum `m` of one row and `sum exp(v - m)`, so that large logits do not overflow:
/// `log-sum-exp = m + ln(sum)`. Callers form `(m - v) + ln(sum)`, never `m + ln(sum)` first,
/// which would round to the spacing of `f32` at the logits' magnitude (`1e-3` at `1e4`).
fn shifted_sum_exp(row: &[f32]) -> (f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = row.iter().map(|&v| (v - max).exp()).sum();
    (max, sum)
}

/// Mean cross-entropy of `logits` (`[N, C]`) against class indices; writes
/// `e = dL/dy = (softmax(y) - onehot(t)) / N` into `logits_grad`.
///
/// ```
/// use fdfa::{loss::cross_entropy, Tensor};
/// let logits = Tensor::from_vec(&[2, 3], vec![1000., 0., 0., 0., 0., 0.])?;
/// let mut e = Tensor::default();
/// let loss = cross_entropy(&logits, &[0, 2], &mut e)?;
/// assert!((loss - 3f32.ln() / 2.0).abs() < 1e-6);
/// assert!(e.data().iter().all(|v| v.is_finite()));
/// # Ok::<(), fdfa::Error>(())
/// ```
///
/// # Errors
/// [`Error::Shape`] when the logits are not `[N, C]` with `N = targets.len()`;
/// [`Error::LabelOutOfRange`] when a target is not below `C`.
pub fn cross_entropy(logits: &Tensor, targets: &[usize], logits_grad: &mut Tensor) -> Result<f32> {
    let (n, c) = check(logits, targets)?;
    logits_grad.resize(&[n, c]);
    let mut total = 0.0f64;
    for ((row, grad), &t) in logits
        .data()
        .chunks(c)
        .zip(logits_grad.data_mut().chunks_mut(c))
        .zip(targets)
    {
        let (max, sum) = shifted_sum_exp(row);
        total += (max as f64 - row[t] as f64) + (sum as f64).ln();
        let scale = 1.0 / sum;
        for (g, &v) in grad.iter_mut().zip(row) {
            *g = (v - max).exp() * scale / n as f32;
        }
        grad[t] -= 1.0 / n as f32;
    }
    Ok((total / n as f64) as f32)
}

/// Summed cross-entropy and number of correct arg-max predictions, for evaluation.
///
/// # Errors
/// As [`cross_entropy`].
pub fn evaluate(logits: &Tensor, targets: &[usize]) -> Result<(f64, usize)> {
    let (_, c) = check(logits, targets)?;
    Ok(evaluate_rows(logits.data(), c, targets))
}

/// [`evaluate`] on rows of `c` logits already checked against `targets`.
pub(crate) fn evaluate_rows(logits: &[f32], c: usize, targets: &[usize]) -> (f64, usize) {
    let mut total = 0.0f64;
    let mut correct = 0;
    for (row, &t) in logits.chunks(c).zip(targets) {
        let (max, sum) = shifted_sum_exp(row);
        total += (max as f64 - row[t] as f64) + (sum as f64).ln();
        // The first maximum, as torch.argmax does.
        let best = row
            .iter()
            .enumerate()
            .fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
        correct += usize::from(best == t);
    }
    (total, correct)
}

/// Directional derivatives of the mean loss along each of the `k` logit tangents
/// (`[k * N, C]`, stacked): `dL_j = sum_i e_i . d_{j,i}`, given `e` from [`cross_entropy`].
///
/// # Errors
/// [`Error::Shape`] when the tangent is not a stack of tangents of `e`'s shape.
pub fn cross_entropy_jvp(logits_grad: &Tensor, logits_tangent: &Tensor) -> Result<Vec<f32>> {
    let block = logits_grad.len();
    if block == 0
        || !logits_tangent.len().is_multiple_of(block)
        || logits_tangent.row_len() != logits_grad.row_len()
    {
        return Err(Error::shape(
            "cross_entropy_jvp",
            format!("k stacked tangents of {:?}", logits_grad.shape()),
            logits_tangent.shape(),
        ));
    }
    Ok(logits_tangent
        .data()
        .chunks(block)
        .map(|d| {
            d.iter()
                .zip(logits_grad.data())
                .map(|(a, b)| (a * b) as f64)
                .sum::<f64>() as f32
        })
        .collect())
}

/// Per-sample directional derivatives `N e_i . d_{j,i}` of each sample's own loss along the
/// logit tangents (`[k * N]` values, tangent-major).
///
/// # Errors
/// As [`cross_entropy_jvp`].
pub fn per_sample_jvp(logits_grad: &Tensor, logits_tangent: &Tensor) -> Result<Vec<f32>> {
    let mut out = Vec::new();
    per_sample_jvp_into(logits_grad, logits_tangent, &mut out)?;
    Ok(out)
}

/// [`per_sample_jvp`] into a buffer kept from step to step.
pub(crate) fn per_sample_jvp_into(
    logits_grad: &Tensor,
    logits_tangent: &Tensor,
    out: &mut Vec<f32>,
) -> Result<()> {
    cross_entropy_jvp(logits_grad, logits_tangent)?;
    let (n, c) = (logits_grad.batch(), logits_grad.row_len());
    out.clear();
    out.extend(logits_tangent.data().chunks(c).enumerate().map(|(r, d)| {
        let e = logits_grad.row(r % n);
        n as f32 * d.iter().zip(e).map(|(a, b)| a * b).sum::<f32>()
    }));
    Ok(())
}
