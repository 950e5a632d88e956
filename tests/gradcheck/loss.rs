//! Mean softmax cross-entropy: value, gradient `e = (softmax - onehot) / N`, JVPs.

use fdfa::loss::{cross_entropy, cross_entropy_jvp, evaluate, per_sample_jvp};
use fdfa::{Error, Tensor};

use crate::common::*;

/// The loss is smooth with second derivatives below one: with `h = 1e-2` the `O(h²)`
/// truncation error is about `1e-5` and the rounding noise of the `f32` loss about `1e-5` too.
const H: f64 = 1e-2;

/// `(logits, targets)`: 2 logits per class scale, targets covering every position.
fn case(n: usize, c: usize, seed: u64) -> (Tensor, Vec<usize>) {
    let mut logits = randn(&[n, c], seed);
    logits.data_mut().iter_mut().for_each(|v| *v *= 2.0);
    let targets = (0..n).map(|i| (i * 7 + seed as usize) % c).collect();
    (logits, targets)
}

/// `mean_i (log sum_j exp(y_ij) - y_i,t_i)` in `f64`.
fn naive_loss(logits: &Tensor, targets: &[usize]) -> f64 {
    let c = logits.row_len();
    let total: f64 = logits
        .data()
        .chunks(c)
        .zip(targets)
        .map(|(row, &t)| {
            let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let lse = max
                + row
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            lse - row[t] as f64
        })
        .sum();
    total / targets.len() as f64
}

fn loss(logits: &Tensor, targets: &[usize]) -> f32 {
    cross_entropy(logits, targets, &mut Tensor::default()).unwrap()
}

const SIZES: [(usize, usize); 3] = [(4, 5), (1, 3), (6, 10)];

#[test]
fn value_matches_naive() {
    for (t, &(n, c)) in SIZES.iter().enumerate() {
        let (logits, targets) = case(n, c, 1000 + t as u64);
        let got = loss(&logits, &targets) as f64;
        let want = naive_loss(&logits, &targets);
        assert_close_f64(&format!("loss {n}x{c}"), &[got], &[want], 1e-6, 1e-7);
        let (sum, _) = evaluate(&logits, &targets).unwrap();
        assert_close_f64(
            &format!("evaluate {n}x{c}"),
            &[sum],
            &[want * n as f64],
            1e-6,
            1e-7,
        );
    }
}

#[test]
fn gradient_matches_finite_differences() {
    for (t, &(n, c)) in SIZES.iter().enumerate() {
        let (logits, targets) = case(n, c, 1010 + t as u64);
        let mut e = Tensor::default();
        cross_entropy(&logits, &targets, &mut e).unwrap();
        assert_eq!(e.shape(), logits.shape());
        let mut want = Vec::with_capacity(logits.len());
        for i in 0..logits.len() {
            let mut d = Tensor::zeros(logits.shape());
            d.data_mut()[i] = 1.0;
            let fd = central_difference(H, |s| vec![loss(&axpy(&logits, s, &d), &targets)]);
            want.push(fd[0]);
        }
        assert_fd_close(&format!("e {n}x{c}"), e.data(), &want);
        // Each row of softmax - onehot sums to zero.
        for row in e.data().chunks(c) {
            assert!(row.iter().sum::<f32>().abs() < 1e-6);
        }
    }
}

/// `dL_j = <e, d_j>` for `k = 1` and `k = 3` stacked logit tangents, and each sample's own
/// `N <e_i, d_j,i>`, against central differences of the mean and of the per-sample losses.
#[test]
fn jvps_match_finite_differences() {
    for (t, &(n, c)) in SIZES.iter().enumerate() {
        let (logits, targets) = case(n, c, 1020 + t as u64);
        let mut e = Tensor::default();
        cross_entropy(&logits, &targets, &mut e).unwrap();
        for k in [1, 3] {
            let dirs = directions(&[n, c], k, 1030);
            let got = cross_entropy_jvp(&e, &stack(&dirs)).unwrap();
            let want: Vec<f64> = dirs
                .iter()
                .map(|d| central_difference(H, |s| vec![loss(&axpy(&logits, s, d), &targets)])[0])
                .collect();
            assert_fd_close(&format!("cross_entropy_jvp {n}x{c} k={k}"), &got, &want);

            let got = per_sample_jvp(&e, &stack(&dirs)).unwrap();
            assert_eq!(got.len(), k * n);
            let mut want = Vec::with_capacity(k * n);
            for d in &dirs {
                for i in 0..n {
                    let (xi, di) = (sample(&logits, i), sample(d, i));
                    let fd =
                        central_difference(H, |s| vec![loss(&axpy(&xi, s, &di), &targets[i..=i])]);
                    want.push(fd[0]);
                }
            }
            assert_fd_close(&format!("per_sample_jvp {n}x{c} k={k}"), &got, &want);
        }
    }
}

/// Logits of `±1e4` overflow a naive `exp`; the shifted log-sum-exp keeps the loss and the
/// gradient finite. They also stay accurate: the loss and the softmax only depend on the
/// differences of the logits, which are exact here, so the `f32` results must be as accurate
/// as for small logits (an implementation that forms `max + ln(sum)` first rounds it to the
/// spacing of `f32` at `1e4`, about `1e-3`, and loses three digits).
#[test]
fn large_logits_are_stable() {
    let logits = Tensor::from_vec(
        &[3, 3],
        vec![1e4, 1e4, -1e4, -1e4, -1e4, -1e4, 1e4, -1e4, 0.0],
    )
    .unwrap();
    let targets = [0, 2, 0];
    let mut e = Tensor::default();
    let l = cross_entropy(&logits, &targets, &mut e).unwrap();
    assert!(l.is_finite() && e.is_finite(), "loss {l}, e {:?}", e.data());
    // A two-way tie (ln 2), a uniform row (ln 3) and a sure hit (exp(-1e4), i.e. 0).
    let want = (2f64.ln() + 3f64.ln()) / 3.0;
    assert_close_f64(
        "naive",
        &[naive_loss(&logits, &targets)],
        &[want],
        1e-12,
        0.0,
    );
    assert_close_f64("loss at 1e4", &[l as f64], &[want], 1e-6, 0.0);
    let third = 1.0 / 3.0;
    let want_e = [
        -third / 2.0,
        third / 2.0,
        0.0, //
        third / 3.0,
        third / 3.0,
        -2.0 * third / 3.0, //
        0.0,
        0.0,
        0.0,
    ];
    let got: Vec<f64> = e.data().iter().map(|&v| v as f64).collect();
    assert_close_f64("e at 1e4", &got, &want_e, 1e-6, 1e-7);
    let (sum, correct) = evaluate(&logits, &targets).unwrap();
    assert_close_f64("evaluate at 1e4", &[sum], &[3.0 * want], 1e-6, 0.0);
    assert_eq!(correct, 2, "the tie goes to the first maximum, class 0");

    // A miss by 2e4.
    let logits = Tensor::from_vec(&[1, 3], vec![1e4, -1e4, 0.0]).unwrap();
    let l = cross_entropy(&logits, &[1], &mut e).unwrap();
    assert_eq!(l, 2e4);
    assert_eq!(e.data(), &[1.0, -1.0, 0.0]);
}

#[test]
fn bad_targets_and_shapes_are_errors() {
    let (logits, _) = case(2, 3, 1040);
    let mut e = Tensor::default();
    let shape_error = |r: fdfa::Result<f32>| {
        assert!(
            matches!(r, Err(Error::Shape { ref layer, .. }) if layer == "cross_entropy"),
            "{r:?}"
        );
        r.unwrap_err().to_string()
    };
    // An out-of-range label is not a shape error: it has its own kind, naming the label,
    // its sample and the number of classes.
    let r = cross_entropy(&logits, &[0, 3], &mut e);
    assert!(
        matches!(
            r,
            Err(Error::LabelOutOfRange {
                label: 3,
                index: 1,
                classes: 3,
                ..
            })
        ),
        "{r:?}"
    );
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("label 3 of sample 1"), "{msg}");
    assert!(matches!(
        evaluate(&logits, &[0, 3]),
        Err(Error::LabelOutOfRange { .. })
    ));
    shape_error(cross_entropy(&logits, &[0], &mut e));
    shape_error(cross_entropy(&Tensor::zeros(&[2, 3, 1]), &[0, 1], &mut e));
    shape_error(cross_entropy(&Tensor::zeros(&[0, 3]), &[], &mut e));

    cross_entropy(&logits, &[0, 1], &mut e).unwrap();
    for bad in [&[2usize, 4][..], &[3, 3], &[6]] {
        let r = cross_entropy_jvp(&e, &Tensor::zeros(bad));
        assert!(
            matches!(r, Err(Error::Shape { ref layer, .. }) if layer == "cross_entropy_jvp"),
            "{bad:?}: {r:?}"
        );
        assert!(per_sample_jvp(&e, &Tensor::zeros(bad)).is_err());
    }
}
