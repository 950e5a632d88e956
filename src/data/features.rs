//! Labelled `f32` features of any rank held in memory, and the normalisation applied to them.

use std::fmt;
use std::ops::Range;

use ndarray::{ArrayView, Dimension};
use rayon::prelude::*;

use super::{DataSource, MIN_SAMPLES_PER_TASK, check_batch, check_subset, sample_len};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `x <- (x - mean) / std`, with one `(mean, std)` pair for every value of a sample, for every
/// channel (the first axis of a sample, as `torchvision.transforms.Normalize` does), or for
/// all values alike.
///
/// A dataset applies it when it fills a batch; [`apply`](Self::apply) applies the same map to
/// new inputs before a trained model sees them, so that inference sees what training saw.
///
/// ```
/// use fdfa::data::Normalize;
/// use fdfa::Tensor;
///
/// # fn main() -> fdfa::Result<()> {
/// // Two channels of two values each.
/// let norm = Normalize::new(vec![1.0, -1.0], vec![2.0, 0.5])?;
/// let mut x = Tensor::from_vec(&[1, 2, 2], vec![3.0, 1.0, -1.0, 0.0])?;
/// norm.apply(&mut x)?;
/// assert_eq!(x.data(), &[1.0, 0.0, 0.0, 2.0]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Normalize {
    /// A normalisation with these means and standard deviations: one pair for all values
    /// (length 1), one per channel, or one per value of a sample.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when the lengths differ or are zero, a mean is not finite, or
    /// a standard deviation is not finite and positive.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self> {
        const WHO: &str = "Normalize";
        if mean.is_empty() || mean.len() != std.len() {
            return Err(Error::config(
                WHO,
                "std",
                format!(
                    "needs as many values as `mean` (at least one), got {} means and {} standard \
                     deviations",
                    mean.len(),
                    std.len()
                ),
            ));
        }
        if let Some((i, m)) = mean.iter().enumerate().find(|(_, m)| !m.is_finite()) {
            return Err(Error::config(
                WHO,
                "mean",
                format!("value {i} is {m}, not finite"),
            ));
        }
        if let Some((i, s)) = std
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Err(Error::config(
                WHO,
                "std",
                format!("value {i} is {s}; it must be finite and positive"),
            ));
        }
        Ok(Self { mean, std })
    }

    /// Per-value standardisation fitted to `features`: the mean and the (population)
    /// standard deviation of every value of a sample over the whole set, as scikit-learn's
    /// `StandardScaler` computes them. A value that never varies keeps a standard deviation
    /// of 1, so it maps to 0 instead of dividing by zero. Sums run in f64.
    ///
    /// ```
    /// use fdfa::data::{FeatureDataset, Normalize};
    ///
    /// # fn main() -> fdfa::Result<()> {
    /// let data = FeatureDataset::new(vec![1.0, 5.0, 3.0, 5.0], &[2], vec![0, 1], 2)?;
    /// let norm = Normalize::standardize(&data);
    /// assert_eq!(norm.mean(), &[2.0, 5.0]);
    /// assert_eq!(norm.std(), &[1.0, 1.0]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn standardize(features: &FeatureDataset) -> Self {
        let d = features.sample_len;
        let n = features.len().max(1) as f64;
        let mut sum = vec![0.0f64; d];
        let mut sq = vec![0.0f64; d];
        for row in features.features.chunks(d) {
            for ((s, q), &v) in sum.iter_mut().zip(&mut sq).zip(row) {
                *s += f64::from(v);
                *q += f64::from(v) * f64::from(v);
            }
        }
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std = sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| {
                let m = s / n;
                let var = (q / n - m * m).max(0.0);
                let sd = var.sqrt() as f32;
                if sd > 0.0 && sd.is_finite() { sd } else { 1.0 }
            })
            .collect();
        Self { mean, std }
    }

    /// The means.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The standard deviations.
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// How many consecutive values of a sample share one pair, or an error when the pairs
    /// fit neither one per value, nor one per channel (axis 0), nor one for all.
    fn run_length(&self, sample_shape: &[usize]) -> Result<usize> {
        let len: usize = sample_shape.iter().product();
        let pairs = self.mean.len();
        if pairs == 1 {
            Ok(len)
        } else if pairs == len {
            Ok(1)
        } else if sample_shape.first() == Some(&pairs) && pairs > 0 {
            Ok(len / pairs)
        } else {
            Err(Error::shape(
                "Normalize",
                format!(
                    "samples with 1, {} (channels) or {len} (values) normalisation pairs, not \
                     {pairs}",
                    sample_shape.first().copied().unwrap_or(0)
                ),
                sample_shape,
            ))
        }
    }

    /// Normalises one sample of `sample_shape`, in place; `run` is from `run_length`.
    fn apply_sample(&self, sample: &mut [f32], run: usize) {
        if self.mean.len() == 1 {
            let (m, s) = (self.mean[0], self.std[0]);
            sample.iter_mut().for_each(|v| *v = (*v - m) / s);
            return;
        }
        for ((chunk, &m), &s) in sample.chunks_mut(run).zip(&self.mean).zip(&self.std) {
            chunk.iter_mut().for_each(|v| *v = (*v - m) / s);
        }
    }

    /// Normalises a batch `[N, sample...]` in place.
    ///
    /// # Errors
    /// [`Error::Shape`] when the pairs fit neither the batch's sample shape's values, its
    /// channels, nor all values alike, or the batch has no axis.
    pub fn apply(&self, x: &mut Tensor) -> Result<()> {
        let Some((_, sample_shape)) = x.shape().split_first() else {
            return Err(Error::shape("Normalize", "[N, ...]", x.shape()));
        };
        let sample_shape = sample_shape.to_vec();
        let run = self.run_length(&sample_shape)?;
        let len: usize = sample_shape.iter().product();
        if len == 0 {
            return Ok(());
        }
        x.data_mut()
            .par_chunks_mut(len)
            .with_min_len(MIN_SAMPLES_PER_TASK)
            .for_each(|s| self.apply_sample(s, run));
        Ok(())
    }
}

/// A labelled dataset of `f32` features of any rank (`[13]` for a table's row, `[3, 32, 32]`
/// for an image already in floating point), held in memory, with an optional
/// [`Normalize`] applied when batches are filled.
///
/// Build it from a `Vec<f32>` and a sample shape, from a [`Tensor`] `[N, ...]`, or from an
/// ndarray array whose first axis is the sample.
///
/// ```
/// use fdfa::data::{DataSource, FeatureDataset};
/// use fdfa::ndarray::array;
///
/// # fn main() -> fdfa::Result<()> {
/// let x = array![[0.5f32, 1.0, -2.0], [1.5, 0.0, 2.0]];
/// let data = FeatureDataset::from_array(x.view(), vec![1, 0], 2)?;
/// assert_eq!(data.sample_shape(), [3]);
/// let mut batch = vec![0.0; 3];
/// let mut targets = vec![0; 1];
/// data.fill_batch(&[1], 0, &mut batch, &mut targets)?;
/// assert_eq!((batch, targets), (vec![1.5, 0.0, 2.0], vec![0]));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq)]
pub struct FeatureDataset {
    features: Vec<f32>,
    labels: Vec<u32>,
    sample_shape: Vec<usize>,
    sample_len: usize,
    classes: usize,
    normalize: Option<Normalize>,
}

impl fmt::Debug for FeatureDataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FeatureDataset")
            .field("len", &self.len())
            .field("sample_shape", &self.sample_shape)
            .field("classes", &self.classes)
            .field("normalize", &self.normalize)
            .finish_non_exhaustive()
    }
}

impl FeatureDataset {
    /// `labels.len()` samples of `sample_shape`, stored one after the other in `features`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `sample_shape` is empty or has a zero, `classes` is zero,
    /// a label is not below `classes` (naming the sample), or a feature is NaN or infinite
    /// (naming the sample and the position); [`Error::Shape`] when `features.len()` is not
    /// `labels.len()` times the sample's size.
    pub fn new(
        features: Vec<f32>,
        sample_shape: &[usize],
        labels: Vec<u32>,
        classes: usize,
    ) -> Result<Self> {
        const WHO: &str = "FeatureDataset";
        if sample_shape.is_empty() || sample_shape.contains(&0) {
            return Err(Error::config(
                WHO,
                "sample_shape",
                format!("needs at least one axis, each positive, got {sample_shape:?}"),
            ));
        }
        if classes == 0 {
            return Err(Error::config(WHO, "classes", "must be positive"));
        }
        let sample_len = sample_len(WHO, sample_shape)?;
        if labels.len().checked_mul(sample_len) != Some(features.len()) {
            return Err(Error::shape(
                WHO,
                format!(
                    "features of length {} (labels) x {sample_len} (values per sample)",
                    labels.len()
                ),
                &[features.len()],
            ));
        }
        if let Some((i, &l)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
        {
            return Err(Error::config(
                WHO,
                "labels",
                format!("label {l} of sample {i} is not below the {classes} classes"),
            ));
        }
        if let Some((i, v)) = features.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::config(
                WHO,
                "features",
                format!(
                    "value {} of sample {} is {v}, not finite",
                    i % sample_len,
                    i / sample_len
                ),
            ));
        }
        Ok(Self {
            features,
            labels,
            sample_shape: sample_shape.to_vec(),
            sample_len,
            classes,
            normalize: None,
        })
    }

    /// The samples of a tensor `[N, ...]`, with their labels.
    ///
    /// # Errors
    /// As [`new`](Self::new); [`Error::Shape`] for a tensor of rank below 2.
    pub fn from_tensor(x: &Tensor, labels: Vec<u32>, classes: usize) -> Result<Self> {
        if x.shape().len() < 2 {
            return Err(Error::shape("FeatureDataset", "[N, ...]", x.shape()));
        }
        if x.shape()[0] != labels.len() {
            return Err(Error::shape(
                "FeatureDataset",
                format!("[{}, ...] (one sample per label)", labels.len()),
                x.shape(),
            ));
        }
        Self::new(x.data().to_vec(), &x.shape()[1..], labels, classes)
    }

    /// The samples of an ndarray array whose first axis is the sample (any memory layout),
    /// with their labels.
    ///
    /// # Errors
    /// As [`from_tensor`](Self::from_tensor).
    pub fn from_array<D: Dimension>(
        x: ArrayView<'_, f32, D>,
        labels: Vec<u32>,
        classes: usize,
    ) -> Result<Self> {
        let shape = x.shape().to_vec();
        // `iter` walks in logical (row-major) order whatever the strides.
        let data: Vec<f32> = x.iter().copied().collect();
        Self::from_tensor(&Tensor::from_vec(&shape, data)?, labels, classes)
    }

    /// Applies `normalize` to every sample it fills from now on.
    ///
    /// # Errors
    /// [`Error::Shape`] when its pairs fit neither a sample's values, its channels, nor all
    /// values alike.
    pub fn with_normalize(mut self, normalize: Normalize) -> Result<Self> {
        normalize.run_length(&self.sample_shape)?;
        self.normalize = Some(normalize);
        Ok(self)
    }

    /// The normalisation applied when filling batches, if any: apply it to new inputs too.
    pub fn normalize(&self) -> Option<&Normalize> {
        self.normalize.as_ref()
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The raw features (before normalisation), sample after sample.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    /// The labels, one per sample.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// A copy of the samples in `range` (a validation split, say), with the same
    /// normalisation.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] when `range` is decreasing or ends past [`len`](Self::len).
    pub fn subset(&self, range: Range<usize>) -> Result<Self> {
        check_subset("FeatureDataset::subset", &range, self.len())?;
        let d = self.sample_len;
        Ok(Self {
            features: self.features[range.start * d..range.end * d].to_vec(),
            labels: self.labels[range].to_vec(),
            sample_shape: self.sample_shape.clone(),
            sample_len: d,
            classes: self.classes,
            normalize: self.normalize.clone(),
        })
    }
}

impl DataSource for FeatureDataset {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn sample_shape(&self) -> &[usize] {
        &self.sample_shape
    }

    fn classes(&self) -> usize {
        self.classes
    }

    fn fill_batch(
        &self,
        indices: &[usize],
        _seed: u64,
        x: &mut [f32],
        targets: &mut [usize],
    ) -> Result<()> {
        check_batch(
            "FeatureDataset::fill_batch",
            self.len(),
            self.sample_len,
            indices,
            x,
            targets,
        )?;
        let d = self.sample_len;
        // Checked against the sample shape when it was set.
        let run = match &self.normalize {
            Some(n) => n.run_length(&self.sample_shape)?,
            None => d,
        };
        x.par_chunks_mut(d)
            .zip(targets.par_iter_mut())
            .zip(indices.par_iter())
            .with_min_len(MIN_SAMPLES_PER_TASK)
            .for_each(|((out, target), &i)| {
                out.copy_from_slice(&self.features[i * d..(i + 1) * d]);
                if let Some(n) = &self.normalize {
                    n.apply_sample(out, run);
                }
                *target = self.labels[i] as usize;
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_labels_values_and_lengths() {
        let err = FeatureDataset::new(vec![0.0; 4], &[2], vec![0, 3], 3).unwrap_err();
        assert!(err.to_string().contains("label 3 of sample 1"), "{err}");
        let err =
            FeatureDataset::new(vec![0.0, 1.0, f32::NAN, 0.0], &[2], vec![0, 1], 2).unwrap_err();
        assert!(err.to_string().contains("value 0 of sample 1"), "{err}");
        assert!(matches!(
            FeatureDataset::new(vec![0.0; 5], &[2], vec![0, 1], 2),
            Err(Error::Shape { .. })
        ));
        assert!(FeatureDataset::new(vec![], &[], vec![], 2).is_err());
        assert!(FeatureDataset::new(vec![0.0; 2], &[2], vec![0], 0).is_err());
        let t = Tensor::from_vec(&[3, 2], vec![0.0; 6]).unwrap();
        assert!(FeatureDataset::from_tensor(&t, vec![0, 1], 2).is_err());
    }

    #[test]
    fn normalize_per_value_channel_and_all() {
        let mut x = Tensor::from_vec(&[2, 2, 2], (0..8).map(|v| v as f32).collect()).unwrap();
        let per_value = Normalize::new(vec![0.0, 1.0, 2.0, 3.0], vec![1.0, 1.0, 1.0, 1.0]).unwrap();
        per_value.apply(&mut x).unwrap();
        assert_eq!(x.data(), &[0.0, 0.0, 0.0, 0.0, 4.0, 4.0, 4.0, 4.0]);
        let per_channel = Normalize::new(vec![0.0, 4.0], vec![2.0, 2.0]).unwrap();
        per_channel.apply(&mut x).unwrap();
        assert_eq!(x.data(), &[0.0, 0.0, -2.0, -2.0, 2.0, 2.0, 0.0, 0.0]);
        let all = Normalize::new(vec![1.0], vec![0.5]).unwrap();
        all.apply(&mut x).unwrap();
        assert_eq!(x.data(), &[-2.0, -2.0, -6.0, -6.0, 2.0, 2.0, -2.0, -2.0]);
        let three = Normalize::new(vec![0.0; 3], vec![1.0; 3]).unwrap();
        assert!(matches!(three.apply(&mut x), Err(Error::Shape { .. })));
        assert!(Normalize::new(vec![0.0], vec![0.0]).is_err());
        assert!(Normalize::new(vec![0.0, 1.0], vec![1.0]).is_err());
        assert!(Normalize::new(vec![f32::INFINITY], vec![1.0]).is_err());
    }

    #[test]
    fn filled_batches_are_normalised_like_apply() {
        let features: Vec<f32> = (0..12).map(|v| v as f32 * 0.5 - 1.0).collect();
        let data = FeatureDataset::new(features, &[2, 2], vec![0, 1, 1], 2).unwrap();
        let norm = Normalize::standardize(&data);
        let data = data.with_normalize(norm.clone()).unwrap();
        let mut x = vec![0.0; 8];
        let mut t = vec![0; 2];
        data.fill_batch(&[2, 0], 0, &mut x, &mut t).unwrap();
        let mut direct = Tensor::from_vec(
            &[2, 2, 2],
            [&data.features()[8..12], &data.features()[0..4]].concat(),
        )
        .unwrap();
        norm.apply(&mut direct).unwrap();
        assert_eq!(x, direct.data());
        assert_eq!(t, [1, 0]);
        // Standardised over the set: every value has mean 0.
        let mut all = vec![0.0; 12];
        data.fill_batch(&[0, 1, 2], 0, &mut all, &mut [0; 3])
            .unwrap();
        for j in 0..4 {
            let mean: f32 = (0..3).map(|i| all[i * 4 + j]).sum::<f32>() / 3.0;
            assert!(mean.abs() < 1e-6, "{mean}");
        }
        let sub = data.subset(1..3).unwrap();
        assert_eq!(sub.len(), 2);
        assert_eq!(sub.normalize(), Some(&norm));
        let wrong = Normalize::new(vec![0.0; 3], vec![1.0; 3]).unwrap();
        assert!(data.clone().with_normalize(wrong).is_err());
    }

    #[test]
    fn from_array_reads_logical_order() {
        let a = ndarray::Array2::from_shape_vec((2, 3), vec![1.0f32, 2., 3., 4., 5., 6.]).unwrap();
        let t = a.t(); // a [3, 2] view with column-major strides
        let data = FeatureDataset::from_array(t, vec![0, 1, 0], 2).unwrap();
        assert_eq!(data.features(), &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
