//! Adam, as `torch.optim.Adam` computes it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::Parameters;
use crate::error::{Error, Result};
use crate::layers::{ParamMut, ParamRef};
use crate::tensor::Tensor;

/// Values per parallel task of the update.
const CHUNK: usize = 1 << 14;

/// Adam's hyper-parameters; `Default` holds PyTorch's values (`lr = 1e-3`,
/// `betas = (0.9, 0.999)`, `eps = 1e-8`, no weight decay).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f32,
    /// Decay rates of the first and second moments.
    pub betas: (f32, f32),
    /// Added to the denominator.
    pub eps: f32,
    /// L2 penalty added to the gradient (PyTorch's `weight_decay`, not AdamW's).
    pub weight_decay: f32,
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            betas: (0.9, 0.999),
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamConfig {
    /// Sets the learning rate.
    #[must_use]
    pub fn with_lr(mut self, lr: f32) -> Self {
        self.lr = lr;
        self
    }

    /// Sets the weight decay.
    #[must_use]
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Validates the values and builds the optimizer.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] for a negative or non-finite learning rate or decay, betas
    /// outside `[0, 1)` or a non-positive `eps`.
    pub fn init(self) -> Result<Adam> {
        let check = |field, ok: bool, reason: &str| {
            if ok {
                Ok(())
            } else {
                Err(Error::config("Adam", field, reason))
            }
        };
        check(
            "lr",
            self.lr.is_finite() && self.lr >= 0.0,
            "must be finite and non-negative",
        )?;
        check(
            "betas",
            (0.0..1.0).contains(&self.betas.0) && (0.0..1.0).contains(&self.betas.1),
            "must lie in [0, 1)",
        )?;
        check("eps", self.eps > 0.0, "must be positive")?;
        check(
            "weight_decay",
            self.weight_decay.is_finite() && self.weight_decay >= 0.0,
            "must be finite and non-negative",
        )?;
        Ok(Adam {
            config: self,
            step: 0,
            states: BTreeMap::new(),
        })
    }
}

/// The scalars of one step.
struct Constants {
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    step_size: f32,
    bias2_sqrt: f32,
}

/// PyTorch's Adam update of one run of values; returns whether every updated value is
/// finite. A non-finite gradient always makes its value non-finite (inf / inf is NaN), so
/// checking the values covers both.
///
/// The square root and the division make this loop compute-bound, not memory-bound: it runs
/// 3.5 times faster with AVX-512 than with the SSE2 baseline, so it is compiled for each
/// vector width and picked at run time. Every operation is correctly rounded and Rust never
/// fuses a multiply and an add, so all versions give the same bits.
#[multiversion::multiversion(targets = "simd")]
fn update(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], c: &Constants) -> bool {
    let n = w.len();
    let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
    // Exponent bits all set: infinity or NaN. Integer OR keeps the loop vectorized.
    let mut non_finite = 0u32;
    for i in 0..n {
        let grad = g[i] + c.wd * w[i];
        m[i] += (1.0 - c.b1) * (grad - m[i]);
        v[i] = c.b2 * v[i] + (1.0 - c.b2) * grad * grad;
        let denom = v[i].sqrt() / c.bias2_sqrt + c.eps;
        w[i] -= c.step_size * m[i] / denom;
        non_finite |= u32::from(w[i].to_bits() & 0x7f80_0000 == 0x7f80_0000);
    }
    non_finite == 0
}

/// The moments of one parameter, in the order its layer stores it (the optimizer is
/// elementwise, so it steps on whatever layout the layer keeps; the checkpoint converts to
/// PyTorch's layout, [`Adam::moments`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AdamState {
    /// First moment (the running mean of the gradients).
    pub(crate) exp_avg: Tensor,
    /// Second moment (the running mean of the squared gradients).
    pub(crate) exp_avg_sq: Tensor,
}

/// Adam over a [`Parameters`] collection, with state per named tensor.
///
/// ```
/// use fdfa::layers::{Param, ParamMut};
/// use fdfa::optim::{AdamConfig, Parameters};
/// use fdfa::Tensor;
///
/// struct One(Param);
/// impl Parameters for One {
///     fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
///         f("w", ParamMut::new(&mut self.0))
///     }
/// }
/// let mut p = One(Param::new(Tensor::from_vec(&[1], vec![1.0])?));
/// p.0.grad = Tensor::from_vec(&[1], vec![0.5])?;
/// let mut adam = AdamConfig::default().with_lr(0.1).init()?;
/// adam.step(&mut p)?;
/// // The first step moves every coordinate by lr, whatever the gradient's scale.
/// assert!((p.0.value.data()[0] - 0.9).abs() < 1e-6);
///
/// p.0.grad = Tensor::from_vec(&[1], vec![f32::NAN])?;
/// let err = adam.step(&mut p).unwrap_err();
/// assert_eq!(err.to_string(), "non-finite value in w.grad after an optimizer step");
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Adam {
    config: AdamConfig,
    step: u64,
    states: BTreeMap<String, AdamState>,
}

impl Adam {
    /// The hyper-parameters.
    pub fn config(&self) -> &AdamConfig {
        &self.config
    }

    /// The current learning rate.
    pub fn lr(&self) -> f32 {
        self.config.lr
    }

    /// Sets the learning rate (schedules call this between epochs).
    pub fn set_lr(&mut self, lr: f32) {
        self.config.lr = lr;
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The names of the tensors that have moments (none before the first step), in name
    /// order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.states.keys().map(String::as_str)
    }

    /// The moments `(exp_avg, exp_avg_sq)` of the parameter `name`, viewed as `param`, in
    /// PyTorch's layout; `None` before its first step.
    pub fn moments<'a>(
        &'a self,
        name: &str,
        param: &ParamRef<'_>,
    ) -> Option<(Cow<'a, Tensor>, Cow<'a, Tensor>)> {
        self.states.get(name).map(|s| {
            (
                param.torch_view(&s.exp_avg),
                param.torch_view(&s.exp_avg_sq),
            )
        })
    }

    pub(crate) fn states(&self) -> &BTreeMap<String, AdamState> {
        &self.states
    }

    /// The moments of `name` (in the parameter's storage layout, `stored_shape`), created at
    /// zero when the tensor has none yet (block-parallel training copies them from the rank
    /// that owns the tensor).
    pub(crate) fn moments_mut(&mut self, name: &str, stored_shape: &[usize]) -> &mut AdamState {
        self.states
            .entry(name.to_string())
            .or_insert_with(|| AdamState {
                exp_avg: Tensor::zeros(stored_shape),
                exp_avg_sq: Tensor::zeros(stored_shape),
            })
    }

    /// Restores a saved step count and moments (in the parameters' storage layout).
    pub(crate) fn restore(&mut self, step: u64, states: BTreeMap<String, AdamState>) {
        self.step = step;
        self.states = states;
    }

    /// One update of every parameter from its gradient. The moments of a parameter are
    /// found by its name, so the order of the visit does not matter.
    ///
    /// # Errors
    /// [`Error::NonFiniteUpdate`] naming the first tensor (in visiting order) whose gradient
    /// (`<name>.grad`) or updated value is not finite, found inside the update loop where it
    /// costs next to nothing; the other parameters are still updated.
    /// [`Error::Shape`] when a gradient is not sized like its parameter, or the moments kept
    /// under a name do not fit the parameter visited under it.
    pub fn step(&mut self, params: &mut dyn Parameters) -> Result<()> {
        self.step += 1;
        let (b1, b2) = self.config.betas;
        let t = self.step as i32;
        let bias1 = 1.0 - (b1 as f64).powi(t);
        let bias2_sqrt = (1.0 - (b2 as f64).powi(t)).sqrt();
        let step_size = (self.config.lr as f64 / bias1) as f32;
        let (eps, wd) = (self.config.eps, self.config.weight_decay);
        let c = Constants {
            b1,
            b2,
            eps,
            wd,
            step_size,
            bias2_sqrt: bias2_sqrt as f32,
        };
        let mut first_error = None;
        let states = &mut self.states;
        crate::parallel::run(|| {
            params.visit_params(&mut |name, mut p: ParamMut<'_>| {
                if let Err(e) = update_param(states, name, &mut p, &c)
                    && first_error.is_none()
                {
                    first_error = Some(e);
                }
            });
        });
        first_error.map_or(Ok(()), Err)
    }
}

/// Adam's update of one named parameter, creating its moments on its first step.
fn update_param(
    states: &mut BTreeMap<String, AdamState>,
    name: &str,
    p: &mut ParamMut<'_>,
    c: &Constants,
) -> Result<()> {
    let s = match states.get_mut(name) {
        Some(s) => s,
        None => {
            let shape = p.view().stored_shape().to_vec();
            states.entry(name.to_string()).or_insert(AdamState {
                exp_avg: Tensor::zeros(&shape),
                exp_avg_sq: Tensor::zeros(&shape),
            })
        }
    };
    let (w, g) = p.storage_mut();
    if g.len() != w.len() {
        return Err(Error::shape(
            &format!("{name}.grad"),
            format!("{} values, as the parameter", w.len()),
            &[g.len()],
        ));
    }
    if s.exp_avg.len() != w.len() || s.exp_avg_sq.len() != w.len() {
        return Err(Error::shape(
            &format!("Adam moments of {name}"),
            format!("{} values", w.len()),
            s.exp_avg.shape(),
        ));
    }
    // Elementwise, so any split gives the same bits.
    let finite = w
        .par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(s.exp_avg.data_mut().par_chunks_mut(CHUNK))
        .zip(s.exp_avg_sq.data_mut().par_chunks_mut(CHUNK))
        .map(|(((w, g), m), v)| update(w, g, m, v, c))
        .reduce(|| true, |a, b| a & b);
    if finite {
        return Ok(());
    }
    // Only on failure: which of the two is to blame.
    let tensor = if g.iter().all(|v| v.is_finite()) {
        name.to_string()
    } else {
        format!("{name}.grad")
    };
    Err(Error::NonFiniteUpdate { tensor })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The run-time-dispatched update (AVX-512 or AVX2 where the CPU has them) gives the same
    /// bits as the same arithmetic one value at a time, so results do not depend on the CPU.
    #[test]
    fn dispatched_update_matches_scalar_bits() {
        let n = 1000;
        let mut rng = crate::init::rng(3);
        let mut data = vec![0.0f32; 4 * n];
        crate::init::fill_normal(&mut data, &mut rng);
        let (w0, rest) = data.split_at(n);
        let (g, rest) = rest.split_at(n);
        let (m0, v0) = rest.split_at(n);
        let v0: Vec<f32> = v0.iter().map(|v| v * v).collect();
        let c = Constants {
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            wd: 0.01,
            step_size: 1e-3 / (1.0 - 0.9f32.powi(3)),
            bias2_sqrt: (1.0 - 0.999f32.powi(3)).sqrt(),
        };
        let (mut w, mut m, mut v) = (w0.to_vec(), m0.to_vec(), v0.clone());
        assert!(update(&mut w, g, &mut m, &mut v, &c));
        for i in 0..n {
            let grad = std::hint::black_box(g[i] + c.wd * w0[i]);
            let mi = m0[i] + (1.0 - c.b1) * (grad - m0[i]);
            let vi = c.b2 * v0[i] + (1.0 - c.b2) * grad * grad;
            let wi = w0[i] - c.step_size * mi / (vi.sqrt() / c.bias2_sqrt + c.eps);
            assert_eq!(m[i].to_bits(), mi.to_bits(), "m[{i}]");
            assert_eq!(v[i].to_bits(), vi.to_bits(), "v[{i}]");
            assert_eq!(w[i].to_bits(), wi.to_bits(), "w[{i}]");
        }
    }

    #[test]
    fn non_finite_gradient_is_reported() {
        let c = Constants {
            b1: 0.9,
            b2: 0.999,
            eps: 1e-8,
            wd: 0.0,
            step_size: 1e-3,
            bias2_sqrt: 0.03,
        };
        let (mut w, mut m, mut v) = (vec![1.0; 40], vec![0.0; 40], vec![0.0; 40]);
        let mut g = vec![0.5; 40];
        assert!(update(&mut w, &g, &mut m, &mut v, &c));
        g[33] = f32::NAN;
        assert!(!update(&mut w, &g, &mut m, &mut v, &c));
    }

    /// Two parameters, visited in the order `flip` says.
    struct Two(crate::layers::Param, crate::layers::Param, bool);

    impl Parameters for Two {
        fn visit_params(&mut self, f: &mut dyn FnMut(&str, ParamMut<'_>)) {
            let (a, b) = (ParamMut::new(&mut self.0), ParamMut::new(&mut self.1));
            if self.2 {
                f("b", b);
                f("a", a);
            } else {
                f("a", a);
                f("b", b);
            }
        }
    }

    fn two(flip: bool) -> Two {
        let p = |v: Vec<f32>, g: Vec<f32>| crate::layers::Param {
            value: Tensor::from_vec(&[v.len()], v).unwrap(),
            grad: Tensor::from_vec(&[g.len()], g).unwrap(),
        };
        Two(
            p(vec![1.0, 2.0], vec![0.5, -0.5]),
            p(vec![3.0], vec![0.25]),
            flip,
        )
    }

    /// Moments are found by name: visiting the parameters in another order from one step to
    /// the next changes nothing.
    #[test]
    fn state_follows_names_not_visiting_order() {
        let mut a = AdamConfig::default().init().unwrap();
        let mut b = AdamConfig::default().init().unwrap();
        let (mut x, mut y) = (two(false), two(false));
        for step in 0..3 {
            y.2 = step % 2 == 1;
            a.step(&mut x).unwrap();
            b.step(&mut y).unwrap();
        }
        assert_eq!(x.0.value, y.0.value);
        assert_eq!(x.1.value, y.1.value);
        assert_eq!(a.names().collect::<Vec<_>>(), ["a", "b"]);
    }

    /// A non-finite gradient or value is named in the step that meets it; a gradient sized
    /// unlike its parameter is a shape error naming it.
    #[test]
    fn bad_tensors_are_named() {
        let mut adam = AdamConfig::default().init().unwrap();
        let mut p = two(false);
        p.1.grad.data_mut()[0] = f32::INFINITY;
        let err = adam.step(&mut p).unwrap_err();
        assert!(
            matches!(&err, Error::NonFiniteUpdate { tensor } if tensor == "b.grad"),
            "{err}"
        );
        let mut p = two(false);
        p.0.value.data_mut()[1] = f32::NAN;
        let err = adam.step(&mut p).unwrap_err();
        assert!(
            matches!(&err, Error::NonFiniteUpdate { tensor } if tensor == "a"),
            "{err}"
        );
        let mut p = two(false);
        p.0.grad = Tensor::zeros(&[3]);
        let err = adam.step(&mut p).unwrap_err();
        assert!(
            matches!(&err, Error::Shape { layer, .. } if layer == "a.grad"),
            "{err}"
        );
    }
}
