//! The harness itself: a check that cannot fail checks nothing.

use crate::common::*;

#[test]
fn assert_close_accepts_values_within_tolerance() {
    assert_close(
        "within",
        &[1.0, 100.0, 0.0],
        &[1.001, 100.1, 1e-4],
        1e-3,
        1e-3,
    );
}

#[test]
#[should_panic(expected = "worst element [2] of 3")]
fn assert_close_reports_the_worst_element() {
    assert_close("worst", &[1.1, 0.0, 5.0], &[1.0, 0.0, 6.0], 1e-2, 0.0);
}

#[test]
#[should_panic(expected = "worst element [1]")]
fn assert_close_fails_on_nan() {
    assert_close("nan", &[1.0, f32::NAN], &[1.0, 1.0], 1.0, 1.0);
}

#[test]
#[should_panic(expected = "first difference at [1]")]
fn assert_bits_eq_tells_zero_from_negative_zero() {
    assert_bits_eq("bits", &[1.0, -0.0], &[1.0, 0.0]);
}

/// The central difference of a cubic is exact up to `h² f'''/6`: with `h = 1e-2` that is
/// `1e-4` for `x³` (whose `f''' = 6`), well inside [`FD_REL`].
#[test]
fn central_difference_of_a_cubic() {
    let x = [0.5f32, -1.5, 2.0];
    let fd = central_difference(1e-2, |t| {
        x.iter().map(|&v| (v + t as f32).powi(3)).collect()
    });
    let want: Vec<f64> = x.iter().map(|&v| 3.0 * (v as f64).powi(2)).collect();
    assert_close_f64("d/dx x^3", &fd, &want, 1e-3, 1e-3);
}

#[test]
fn fixtures_are_seeded_and_keep_their_promises() {
    assert_eq!(randn(&[3, 4], 5), randn(&[3, 4], 5));
    assert_ne!(randn(&[3, 4], 5), randn(&[3, 4], 6));
    assert!(
        away_from_zero(&[50], 0.1, 1)
            .data()
            .iter()
            .all(|v| v.abs() >= 0.1)
    );
    let mut d = distinct(&[2, 3, 5], 0.1, 2).into_vec();
    d.sort_by(f32::total_cmp);
    assert!(d.windows(2).all(|w| w[1] - w[0] >= 0.1 - 1e-6));
    let s = subset(100, 10, 3);
    assert_eq!(s.len(), 10);
    assert_eq!((s[0], s[9]), (0, 99));
    assert!(s.windows(2).all(|w| w[0] < w[1]));
}
