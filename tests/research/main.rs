//! Research instruments: the forward-gradient baselines' statistics, several directions per
//! sample, the alignment diagnostics, and the plots.
//!
//! One test binary, a file per subject. Everything but the MNIST alignment test runs on
//! small networks in well under a second in release.

#[path = "../common/mod.rs"]
mod common;

mod alignment;
mod directions;
mod forward_gradient;
mod plot;

use fdfa::init::{Rng, fill_normal};
use fdfa::layers::{Layer, LinearConfig, Relu, State};
use fdfa::model::Model;
use fdfa::{Result, Tensor};

/// A boxed layer.
pub fn boxed(layer: impl Layer + 'static) -> Box<dyn Layer> {
    Box::new(layer)
}

/// A linear layer `d_in -> d_out` named `name`.
pub fn linear(name: &str, d_in: usize, d_out: usize, rng: &mut Rng) -> Result<Box<dyn Layer>> {
    Ok(boxed(
        LinearConfig::new(d_in, d_out).with_name(name).init(rng)?,
    ))
}

/// A ReLU named `name`.
pub fn relu(name: &str) -> Box<dyn Layer> {
    boxed(Relu::new(name))
}

/// A `[n, shape...]` tensor of standard normal values.
pub fn normal(shape: &[usize], rng: &mut Rng) -> Tensor {
    let mut t = Tensor::zeros(shape);
    fill_normal(t.data_mut(), rng);
    t
}

/// Every parameter's gradient, concatenated in visiting order, in `f64`.
pub fn grads(model: &mut Model) -> Vec<f64> {
    let mut out = Vec::new();
    model.visit_state(&mut |_, s| {
        if let State::Param(p) = s {
            out.extend(p.grad().data().iter().map(|&v| f64::from(v)));
        }
    });
    out
}

/// The gradients of the parameters whose names `keep` accepts, concatenated, in `f64`.
pub fn grads_of(model: &mut Model, keep: &dyn Fn(&str) -> bool) -> Vec<f64> {
    let mut out = Vec::new();
    model.visit_state(&mut |name, s| {
        if let (true, State::Param(p)) = (keep(name), s) {
            out.extend(p.grad().data().iter().map(|&v| f64::from(v)));
        }
    });
    out
}

/// The cosine of two vectors.
pub fn cosine(a: &[f64], b: &[f64]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Squared norm.
pub fn norm2(a: &[f64]) -> f64 {
    a.iter().map(|x| x * x).sum()
}

/// Element-wise mean and total (summed) unbiased variance of a stream of vectors.
#[derive(Default)]
pub struct Spread {
    count: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl Spread {
    /// Adds one draw.
    pub fn push(&mut self, v: &[f64]) {
        if self.count == 0 {
            self.mean = vec![0.0; v.len()];
            self.m2 = vec![0.0; v.len()];
        }
        self.count += 1;
        let n = self.count as f64;
        for ((m, s), &x) in self.mean.iter_mut().zip(&mut self.m2).zip(v) {
            let delta = x - *m;
            *m += delta / n;
            *s += delta * (x - *m);
        }
    }

    /// The mean of the draws.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }

    /// The total variance, summed over elements.
    pub fn variance(&self) -> f64 {
        self.m2.iter().sum::<f64>() / (self.count - 1) as f64
    }
}
