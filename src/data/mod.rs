//! Datasets: readers for MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, the CIFAR/AlexNet
//! augmentation pipeline, and the [`DataSource`] trait the trainer builds batches from.
//!
//! A [`Dataset`] holds the raw `u8` pixels of every sample (channel, row, column order) and its
//! labels; it is a [`DataSource`] that normalises each pixel as the reference implementation
//! does: `p / 255`, then `(p - 0.5) / 0.5`, so every value lies in `[-1, 1]`.
//!
//! ```
//! use fdfa::data::{DataSource, Dataset};
//!
//! # fn main() -> fdfa::Result<()> {
//! // Two 1x2x2 images with labels 1 and 0.
//! let ds = Dataset::new(vec![0, 255, 0, 255, 255, 255, 0, 0], vec![1, 0], [1, 2, 2], 2)?;
//! let mut x = vec![0.0; 4];
//! let mut targets = vec![0; 1];
//! ds.fill_batch(&[1], 0, &mut x, &mut targets)?;
//! assert_eq!(x, [1.0, 1.0, -1.0, -1.0]);
//! assert_eq!(targets, [0]);
//! # Ok(())
//! # }
//! ```
//!
//! Files are found with [`locate`] and loaded with [`load`] (or the per-format loaders
//! [`load_mnist`], [`load_fashion_mnist`], [`load_cifar10`], [`load_cifar100`]). Every reader
//! checks header counts against the file's length before it allocates, bounds gzip
//! decompression by the size the header announces, and names the file in every error.

mod cifar;
#[cfg(feature = "download")]
mod download;
mod features;
mod idx;
mod locate;
pub(crate) mod regular;
mod transform;

use std::fmt;
use std::ops::Range;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use rayon::prelude::*;

use crate::error::{Error, Result};

pub use cifar::{load_cifar10, load_cifar100, read_cifar10_batch, read_cifar100_batch};
#[cfg(feature = "download")]
pub use download::{Progress, download, download_from};
pub use features::{FeatureDataset, Normalize};
pub use idx::{load_fashion_mnist, load_mnist, read_idx_images, read_idx_labels};
pub use locate::{CIFAR100_SIZE, DATA_ENV, DatasetName, load, load_raw, locate};
pub use transform::Augmented;

/// Samples below this count are filled on one thread together (rayon's `with_min_len`).
const MIN_SAMPLES_PER_TASK: usize = 4;

/// A source of samples from which the trainer builds batches.
///
/// Object-safe, so that a trainer can hold a `Box<dyn DataSource>`; implemented by
/// [`Dataset`] (no augmentation) and [`Augmented`] (the CIFAR-100/AlexNet pipelines).
///
/// ```
/// use fdfa::data::{DataSource, Dataset};
///
/// # fn main() -> fdfa::Result<()> {
/// let ds = Dataset::new(vec![255; 3 * 4], vec![0, 1, 2], [1, 2, 2], 3)?;
/// let source: Box<dyn DataSource> = Box::new(ds);
/// assert_eq!(source.len(), 3);
/// assert_eq!(source.sample_shape(), [1, 2, 2]);
/// let mut x = vec![0.0; 2 * 4];
/// let mut targets = vec![0; 2];
/// source.fill_batch(&[2, 0], 7, &mut x, &mut targets)?;
/// assert_eq!(targets, [2, 0]);
/// assert!(x.iter().all(|&v| v == 1.0));
/// # Ok(())
/// # }
/// ```
pub trait DataSource: Send + Sync {
    /// Number of samples.
    fn len(&self) -> usize;

    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one sample as the network sees it, of any rank: `[1, 28, 28]` or
    /// `[3, 224, 224]` for images, `[13]` for a row of 13 features. It must fit the model's
    /// input shape by the rule of [`fits_input`].
    fn sample_shape(&self) -> &[usize];

    /// Number of classes; every target is below it.
    fn classes(&self) -> usize;

    /// Writes the samples `indices` into `x` (length `indices.len() * prod(sample_shape)`),
    /// normalised as the reference does (`pixel / 255`, then `(p - 0.5) / 0.5`), and their
    /// labels into `targets` (length `indices.len()`).
    ///
    /// `seed` drives any random augmentation: sample `j` of the batch uses its own generator
    /// derived from `(seed, j)` (see [`sample_rng`]), so the fill runs in parallel over samples
    /// and gives the same result whatever the number of threads.
    ///
    /// # Errors
    ///
    /// [`Error::Shape`] when `x` or `targets` does not have the length above, and
    /// [`Error::InvalidConfig`] when an index is not below [`len`](DataSource::len). Nothing is
    /// written in either case.
    fn fill_batch(
        &self,
        indices: &[usize],
        seed: u64,
        x: &mut [f32],
        targets: &mut [usize],
    ) -> Result<()>;

    /// [`fill_batch`](Self::fill_batch) for the samples at positions `first..` of a batch
    /// whose other positions other ranks fill (data-parallel training): any randomness must
    /// follow the sample's position in the whole batch, so that the split batch is the whole
    /// batch. The default calls `fill_batch`, which is right for every source whose
    /// randomness does not depend on the position (all but augmenting ones); a source that
    /// augments by position overrides it, as [`Augmented`] does.
    ///
    /// # Errors
    /// As [`fill_batch`](Self::fill_batch).
    fn fill_batch_at(
        &self,
        indices: &[usize],
        seed: u64,
        first: usize,
        x: &mut [f32],
        targets: &mut [usize],
    ) -> Result<()> {
        let _ = first;
        self.fill_batch(indices, seed, x, targets)
    }
}

/// Whether samples of `sample` fit a model whose input is `input` (both without the batch
/// axis): the same shape once axes of length 1 are ignored (`[28, 28]` fits `[1, 28, 28]`),
/// or a flat sample (`[784]`) holding as many values, which the model reads in row-major
/// order. Images of another size with the same number of values (`[1, 16, 49]` for
/// `[1, 28, 28]`) do not fit.
///
/// ```
/// use fdfa::data::fits_input;
///
/// assert!(fits_input(&[1, 28, 28], &[1, 28, 28]));
/// assert!(fits_input(&[28, 28], &[1, 28, 28]));
/// assert!(fits_input(&[784], &[1, 28, 28]));
/// assert!(!fits_input(&[1, 16, 49], &[1, 28, 28]));
/// assert!(!fits_input(&[3, 28, 28], &[1, 28, 28]));
/// ```
pub fn fits_input(sample: &[usize], input: &[usize]) -> bool {
    let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
    let count = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    squeeze(sample) == squeeze(input)
        || (sample.len() == 1 && count(sample).is_some() && count(sample) == count(input))
}

/// Checks, before anything is trained, that `source` fits a model taking samples of
/// `input_shape` with `classes` logits: a logit for every class of the data (a model may
/// have more), and a sample shape that [`fits_input`].
///
/// # Errors
/// [`Error::ClassMismatch`] or [`Error::InputMismatch`], with both values.
///
/// ```
/// use fdfa::data::{check_fits, Dataset};
/// use fdfa::Error;
///
/// let data = Dataset::new(vec![0; 8], vec![0, 9], [1, 2, 2], 10).unwrap();
/// assert!(check_fits(&data, &[1, 2, 2], 10).is_ok());
/// assert!(matches!(check_fits(&data, &[1, 2, 2], 2), Err(Error::ClassMismatch { .. })));
/// assert!(matches!(check_fits(&data, &[1, 1, 4], 10), Err(Error::InputMismatch { .. })));
/// ```
pub fn check_fits(source: &dyn DataSource, input_shape: &[usize], classes: usize) -> Result<()> {
    if source.classes() > classes {
        return Err(Error::ClassMismatch {
            data: source.classes(),
            model: classes,
        });
    }
    if !fits_input(source.sample_shape(), input_shape) {
        return Err(Error::InputMismatch {
            data: source.sample_shape().to_vec(),
            model: input_shape.to_vec(),
        });
    }
    Ok(())
}

/// The generator that sample `j` of a batch filled with `seed` uses for its augmentation:
/// ChaCha8 seeded from `seed`, on stream `j`.
///
/// ```
/// use fdfa::data::sample_rng;
/// use rand_chacha::rand_core::RngCore;
///
/// assert_eq!(sample_rng(1, 0).next_u64(), sample_rng(1, 0).next_u64());
/// assert_ne!(sample_rng(1, 0).next_u64(), sample_rng(1, 1).next_u64());
/// ```
pub fn sample_rng(seed: u64, j: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(j as u64);
    rng
}

/// Maps a raw pixel to the network's input range: `(p / 255 - 0.5) / 0.5`.
#[inline]
pub(crate) fn normalise(p: u8) -> f32 {
    (f32::from(p) / 255.0 - 0.5) / 0.5
}

/// A labelled image dataset held in memory as raw bytes.
///
/// Pixels are stored sample after sample, each in channel, row, column order (`C×H×W`,
/// row-major); labels are `u32` below [`classes`](Dataset::classes).
///
/// ```
/// use fdfa::data::Dataset;
///
/// # fn main() -> fdfa::Result<()> {
/// let ds = Dataset::new(vec![1, 2, 3, 4, 5, 6], vec![0, 1, 1], [1, 1, 2], 2)?;
/// assert_eq!(ds.len(), 3);
/// assert!(!ds.is_empty());
/// assert_eq!(ds.sample_shape(), [1, 1, 2]);
/// assert_eq!(ds.classes(), 2);
/// assert_eq!(ds.pixels(), &[1, 2, 3, 4, 5, 6]);
/// assert_eq!(ds.labels(), &[0, 1, 1]);
/// assert_eq!(ds.sample(1), Some((&[3u8, 4][..], 1)));
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Dataset {
    pixels: Vec<u8>,
    labels: Vec<u32>,
    sample_shape: [usize; 3],
    sample_len: usize,
    classes: usize,
}

impl fmt::Debug for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("sample_shape", &self.sample_shape)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Builds a dataset from `labels.len()` samples of shape `sample_shape` (`[C, H, W]`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when a dimension of `sample_shape` or `classes` is zero, or a
    /// label is not below `classes`; [`Error::Shape`] when `pixels.len()` is not
    /// `labels.len() * C * H * W`.
    ///
    /// ```
    /// use fdfa::{Error, data::Dataset};
    ///
    /// assert!(Dataset::new(vec![0; 8], vec![0, 1], [1, 2, 2], 2).is_ok());
    /// // One pixel short.
    /// assert!(matches!(Dataset::new(vec![0; 7], vec![0, 1], [1, 2, 2], 2), Err(Error::Shape { .. })));
    /// // Label 2 with two classes.
    /// assert!(matches!(
    ///     Dataset::new(vec![0; 8], vec![0, 2], [1, 2, 2], 2),
    ///     Err(Error::InvalidConfig { field: "labels", .. })
    /// ));
    /// ```
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u32>,
        sample_shape: [usize; 3],
        classes: usize,
    ) -> Result<Self> {
        const LAYER: &str = "Dataset";
        if sample_shape.contains(&0) {
            return Err(Error::config(
                LAYER,
                "sample_shape",
                format!("every dimension must be positive, got {sample_shape:?}"),
            ));
        }
        if classes == 0 {
            return Err(Error::config(LAYER, "classes", "must be positive"));
        }
        let sample_len = sample_len(LAYER, &sample_shape)?;
        let expected = labels.len().checked_mul(sample_len);
        if expected != Some(pixels.len()) {
            return Err(Error::shape(
                LAYER,
                format!(
                    "pixels of length {} x {} x {} x {} (labels x C x H x W)",
                    labels.len(),
                    sample_shape[0],
                    sample_shape[1],
                    sample_shape[2]
                ),
                &[pixels.len()],
            ));
        }
        if let Some((index, &label)) = labels
            .iter()
            .enumerate()
            .find(|&(_, &l)| l as usize >= classes)
        {
            return Err(Error::config(
                LAYER,
                "labels",
                format!("label {label} at index {index} is not below the {classes} classes"),
            ));
        }
        Ok(Self {
            pixels,
            labels,
            sample_shape,
            sample_len,
            classes,
        })
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset holds no sample.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Shape of one sample, `[C, H, W]`.
    pub fn sample_shape(&self) -> [usize; 3] {
        self.sample_shape
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// All pixels, sample after sample, each `C×H×W` row-major.
    pub fn pixels(&self) -> &[u8] {
        &self.pixels
    }

    /// All labels, one per sample.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// The pixels and the label of sample `index`, or `None` when it is out of range.
    pub fn sample(&self, index: usize) -> Option<(&[u8], u32)> {
        let label = *self.labels.get(index)?;
        let start = index.checked_mul(self.sample_len)?;
        let pixels = self
            .pixels
            .get(start..start.checked_add(self.sample_len)?)?;
        Some((pixels, label))
    }

    /// A copy of the samples in `range`, e.g. a small training subset.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `range` is decreasing or ends past [`len`](Self::len).
    ///
    /// ```
    /// use fdfa::data::Dataset;
    ///
    /// # fn main() -> fdfa::Result<()> {
    /// let ds = Dataset::new(vec![10, 11, 12, 13], vec![0, 1, 0, 1], [1, 1, 1], 2)?;
    /// let sub = ds.subset(1..3)?;
    /// assert_eq!(sub.pixels(), &[11, 12]);
    /// assert_eq!(sub.labels(), &[1, 0]);
    /// assert!(ds.subset(3..5).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn subset(&self, range: Range<usize>) -> Result<Self> {
        check_subset("Dataset::subset", &range, self.len())?;
        // In range, so the products cannot overflow: they are at most `pixels.len()`.
        let pixels =
            self.pixels[range.start * self.sample_len..range.end * self.sample_len].to_vec();
        Ok(Self {
            pixels,
            labels: self.labels[range].to_vec(),
            sample_shape: self.sample_shape,
            sample_len: self.sample_len,
            classes: self.classes,
        })
    }

    /// New images, as raw pixels in this dataset's layout (`C×H×W` each, one after the
    /// other), turned into a model input `[N, C, H, W]` by the normalisation training used.
    ///
    /// ```
    /// use fdfa::data::Dataset;
    ///
    /// # fn main() -> fdfa::Result<()> {
    /// let train = Dataset::new(vec![0; 4], vec![0], [1, 2, 2], 2)?;
    /// let x = train.input_from_pixels(&[0, 255, 0, 255, 255, 255, 0, 0])?;
    /// assert_eq!(x.shape(), &[2, 1, 2, 2]);
    /// assert_eq!(x.data(), &[-1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] when `pixels` is empty or not a whole number of images.
    pub fn input_from_pixels(&self, pixels: &[u8]) -> Result<crate::Tensor> {
        if pixels.is_empty() || !pixels.len().is_multiple_of(self.sample_len) {
            return Err(Error::shape(
                "Dataset::input_from_pixels",
                format!(
                    "a positive multiple of {} pixels ({:?} per image)",
                    self.sample_len, self.sample_shape
                ),
                &[pixels.len()],
            ));
        }
        let mut shape = vec![pixels.len() / self.sample_len];
        shape.extend_from_slice(&self.sample_shape);
        crate::Tensor::from_vec(&shape, pixels.iter().map(|&p| normalise(p)).collect())
    }

    /// The pixels of sample `index`; callers have checked `index < len()`.
    pub(crate) fn sample_pixels(&self, index: usize) -> &[u8] {
        let start = index * self.sample_len;
        &self.pixels[start..start + self.sample_len]
    }
}

/// The number of values in a sample of `shape`, or an error naming `who` when it overflows.
pub(crate) fn sample_len(who: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::config(who, "sample_shape", format!("{shape:?} overflows usize")))
}

/// Checks that `range` is an increasing range within `len` samples, for a `subset`.
pub(crate) fn check_subset(who: &str, range: &Range<usize>, len: usize) -> Result<()> {
    if range.start > range.end || range.end > len {
        return Err(Error::config(
            who,
            "range",
            format!(
                "{}..{} is not within the {len} samples",
                range.start, range.end
            ),
        ));
    }
    Ok(())
}

/// Checks the arguments of [`DataSource::fill_batch`]: `x` holds `indices.len()` samples of
/// `sample_len` values, `targets` one per index, and every index is below `len`.
pub(crate) fn check_batch(
    source: &str,
    len: usize,
    sample_len: usize,
    indices: &[usize],
    x: &[f32],
    targets: &[usize],
) -> Result<()> {
    if indices.len().checked_mul(sample_len) != Some(x.len()) {
        return Err(Error::shape(
            source,
            format!(
                "x of length {} (indices) x {sample_len} (sample)",
                indices.len()
            ),
            &[x.len()],
        ));
    }
    if targets.len() != indices.len() {
        return Err(Error::shape(
            source,
            format!("targets of length {} (indices)", indices.len()),
            &[targets.len()],
        ));
    }
    if let Some((j, &i)) = indices.iter().enumerate().find(|&(_, &i)| i >= len) {
        return Err(Error::config(
            source,
            "indices",
            format!("index {i} (batch position {j}) is not below the {len} samples"),
        ));
    }
    Ok(())
}

impl DataSource for Dataset {
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
            "Dataset::fill_batch",
            self.len(),
            self.sample_len,
            indices,
            x,
            targets,
        )?;
        x.par_chunks_mut(self.sample_len)
            .zip(targets.par_iter_mut())
            .zip(indices.par_iter())
            .with_min_len(MIN_SAMPLES_PER_TASK)
            .for_each(|((out, target), &i)| {
                for (o, &p) in out.iter_mut().zip(self.sample_pixels(i)) {
                    *o = normalise(p);
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
    fn normalise_maps_bytes_onto_minus_one_one() {
        assert_eq!(normalise(0), -1.0);
        assert_eq!(normalise(255), 1.0);
        assert!(normalise(128).abs() < 0.01);
    }

    #[test]
    fn fill_batch_rejects_bad_lengths_and_indices() {
        let ds = Dataset::new(vec![0; 8], vec![0, 1], [1, 2, 2], 2).unwrap();
        let mut x = vec![0.0; 8];
        let mut t = vec![0; 2];
        assert!(matches!(
            ds.fill_batch(&[0, 1], 0, &mut x[..7], &mut t),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            ds.fill_batch(&[0, 1], 0, &mut x, &mut t[..1]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            ds.fill_batch(&[0, 2], 0, &mut x, &mut t),
            Err(Error::InvalidConfig {
                field: "indices",
                ..
            })
        ));
        assert!(ds.fill_batch(&[], 0, &mut [], &mut []).is_ok());
    }

    #[test]
    fn subset_of_everything_and_of_nothing() {
        let ds = Dataset::new(vec![1, 2, 3], vec![0, 1, 2], [1, 1, 1], 3).unwrap();
        assert_eq!(ds.subset(0..3).unwrap(), ds);
        assert!(ds.subset(2..2).unwrap().is_empty());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = ds.subset(2..1);
        assert!(reversed.is_err());
    }

    #[test]
    fn new_rejects_zero_dimensions_and_classes() {
        assert!(Dataset::new(vec![], vec![], [1, 0, 2], 2).is_err());
        assert!(Dataset::new(vec![], vec![], [1, 1, 1], 0).is_err());
        assert!(Dataset::new(vec![], vec![], [usize::MAX, 2, 2], 1).is_err());
    }
}
