//! The CIFAR-100/AlexNet input pipelines, as torchvision runs them.
//!
//! - training: `RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3/4, 4/3))` with bilinear
//!   interpolation, then `RandomHorizontalFlip(0.5)`;
//! - test: `Resize(size)` with bilinear interpolation.
//!
//! Both end with `ToTensor` and `Normalize((0.5,) * 3, (0.5,) * 3)`, that is
//! `(p / 255 - 0.5) / 0.5`. Interpolation follows PyTorch's `align_corners=False` convention
//! without antialiasing (the inputs are upscaled: a 32x32 image, or a crop of it, becomes
//! 224x224), and rounds the interpolated value to a byte, as resizing a `uint8` image does,
//! before normalising. For upscaling this is also what PIL's bilinear filter computes (the
//! reference resizes PIL images), except that PIL rounds after each of its two passes, so a
//! pixel may differ by one grey level.

use ndarray_rand::rand::Rng;
use rayon::prelude::*;

use super::{DataSource, Dataset, MIN_SAMPLES_PER_TASK, check_batch, normalise, sample_rng};
use crate::error::{Error, Result};

/// `RandomResizedCrop`'s default range of the crop's area, as a fraction of the image's.
const SCALE: (f64, f64) = (0.08, 1.0);
/// `RandomResizedCrop`'s default range of the crop's aspect ratio (width / height).
const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);
/// Attempts at sampling a crop that fits before falling back to a central crop.
const ATTEMPTS: usize = 10;
/// Probability of a horizontal flip.
const FLIP_P: f64 = 0.5;

/// Which pipeline an [`Augmented`] source runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Train,
    Test,
}

/// A [`Dataset`] seen through the CIFAR-100/AlexNet pipeline: random resized crops and flips
/// for training ([`Augmented::train`]), a plain resize for testing ([`Augmented::test`]).
/// Samples come out with shape `[C, size, size]`.
///
/// ```
/// use fdfa::data::{Augmented, DataSource, Dataset};
///
/// # fn main() -> fdfa::Result<()> {
/// let ds = Dataset::new((0..2 * 3 * 4 * 4).map(|v| v as u8).collect(), vec![0, 1], [3, 4, 4], 2)?;
/// let train = Augmented::train(ds.clone(), 8)?;
/// assert_eq!(train.sample_shape(), [3, 8, 8]);
/// let mut x = vec![0.0; 2 * 3 * 8 * 8];
/// let mut targets = vec![0; 2];
/// train.fill_batch(&[0, 1], 42, &mut x, &mut targets)?;
/// assert_eq!(targets, [0, 1]);
/// assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
///
/// // The same seed gives the same batch.
/// let mut again = vec![0.0; x.len()];
/// train.fill_batch(&[0, 1], 42, &mut again, &mut targets)?;
/// assert_eq!(x, again);
///
/// let test = Augmented::test(ds, 8)?;
/// assert_eq!(test.len(), 2);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Augmented {
    dataset: Dataset,
    size: usize,
    shape: [usize; 3],
    sample_len: usize,
    mode: Mode,
}

impl Augmented {
    /// The training pipeline: `RandomResizedCrop(size)` then `RandomHorizontalFlip(0.5)`.
    ///
    /// The crop follows torchvision's algorithm: up to ten draws of an area in
    /// `[0.08, 1.0)` of the image's and of a log aspect ratio in `[ln 3/4, ln 4/3)`, keeping
    /// the first crop that fits at a uniformly drawn position; failing that, the largest
    /// central crop whose aspect ratio lies in `[3/4, 4/3]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `size` is zero or the output does not fit in memory.
    pub fn train(dataset: Dataset, size: usize) -> Result<Self> {
        Self::new(dataset, size, Mode::Train)
    }

    /// The test pipeline: a bilinear resize to `size x size`. For a square image (CIFAR)
    /// this is torchvision's `Resize(size)`; other images are stretched to the square.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `size` is zero or the output does not fit in memory.
    pub fn test(dataset: Dataset, size: usize) -> Result<Self> {
        Self::new(dataset, size, Mode::Test)
    }

    fn new(dataset: Dataset, size: usize, mode: Mode) -> Result<Self> {
        let sample_len = size
            .checked_mul(size)
            .and_then(|v| v.checked_mul(dataset.sample_shape()[0]))
            .filter(|_| size > 0)
            .ok_or_else(|| {
                Error::config(
                    "Augmented",
                    "size",
                    format!("must be positive and small enough to fit in memory, got {size}"),
                )
            })?;
        Ok(Self {
            shape: [dataset.sample_shape()[0], size, size],
            dataset,
            size,
            sample_len,
            mode,
        })
    }

    /// The wrapped dataset.
    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// Side of the square output images.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Whether this is the training (random) pipeline rather than the test one.
    pub fn is_train(&self) -> bool {
        self.mode == Mode::Train
    }
}

impl DataSource for Augmented {
    fn len(&self) -> usize {
        self.dataset.len()
    }

    fn sample_shape(&self) -> &[usize] {
        &self.shape
    }

    fn classes(&self) -> usize {
        self.dataset.classes()
    }

    fn fill_batch(
        &self,
        indices: &[usize],
        seed: u64,
        x: &mut [f32],
        targets: &mut [usize],
    ) -> Result<()> {
        self.fill_batch_at(indices, seed, 0, x, targets)
    }

    fn fill_batch_at(
        &self,
        indices: &[usize],
        seed: u64,
        first: usize,
        x: &mut [f32],
        targets: &mut [usize],
    ) -> Result<()> {
        check_batch(
            "Augmented::fill_batch",
            self.len(),
            self.sample_len,
            indices,
            x,
            targets,
        )?;
        let shape = self.dataset.sample_shape();
        x.par_chunks_mut(self.sample_len)
            .zip(targets.par_iter_mut())
            .zip(indices.par_iter())
            .enumerate()
            .with_min_len(MIN_SAMPLES_PER_TASK)
            .for_each(|(j, ((out, target), &i))| {
                let (crop, flip) = match self.mode {
                    Mode::Train => {
                        let mut rng = sample_rng(seed, first + j);
                        let crop = random_resized_crop(shape[1], shape[2], &mut rng);
                        (crop, rng.random::<f64>() < FLIP_P)
                    }
                    Mode::Test => (CropBox::whole(shape[1], shape[2]), false),
                };
                let image = self.dataset.sample_pixels(i);
                resize_into(image, shape, crop, self.size, flip, out);
                *target = self.dataset.labels()[i] as usize;
            });
        Ok(())
    }
}

/// A rectangle of an image, in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CropBox {
    top: usize,
    left: usize,
    height: usize,
    width: usize,
}

impl CropBox {
    fn whole(height: usize, width: usize) -> Self {
        Self {
            top: 0,
            left: 0,
            height,
            width,
        }
    }
}

/// torchvision's `RandomResizedCrop.get_params` with the default scale and ratio, for an
/// image of `height x width` (both positive). Python's `round` rounds half to even.
fn random_resized_crop(height: usize, width: usize, rng: &mut impl Rng) -> CropBox {
    let area = (height * width) as f64;
    let log_ratio = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..ATTEMPTS {
        let target_area = area * rng.random_range(SCALE.0..SCALE.1);
        let aspect = rng.random_range(log_ratio.0..log_ratio.1).exp();
        let w = (target_area * aspect).sqrt().round_ties_even() as usize;
        let h = (target_area / aspect).sqrt().round_ties_even() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            let top = rng.random_range(0..=height - h);
            let left = rng.random_range(0..=width - w);
            return CropBox {
                top,
                left,
                height: h,
                width: w,
            };
        }
    }
    central_crop(height, width)
}

/// torchvision's fallback: the largest central crop whose aspect ratio lies within `RATIO`.
fn central_crop(height: usize, width: usize) -> CropBox {
    let in_ratio = width as f64 / height as f64;
    let (h, w) = if in_ratio < RATIO.0 {
        let h = (width as f64 / RATIO.0).round_ties_even() as usize;
        (h.clamp(1, height), width)
    } else if in_ratio > RATIO.1 {
        let w = (height as f64 * RATIO.1).round_ties_even() as usize;
        (height, w.clamp(1, width))
    } else {
        (height, width)
    };
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
    }
}

/// For each output coordinate of an axis resized from `in_len` to `out_len`, the two source
/// coordinates to blend and the weight of the second (`align_corners=False`: output pixel
/// centres map onto input pixel centres, coordinates below zero clamp to zero).
fn taps(in_len: usize, out_len: usize) -> Vec<(usize, usize, f32)> {
    let scale = in_len as f64 / out_len as f64;
    (0..out_len)
        .map(|d| {
            let src = ((d as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(in_len - 1);
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, (src - i0 as f64) as f32)
        })
        .collect()
}

/// Resizes the `crop` of `image` (`shape = [C, H, W]`) to `size x size` by bilinear
/// interpolation, mirrors it horizontally when `flip`, and writes the normalised result into
/// `out` (`C * size * size` values). The crop lies inside the image.
fn resize_into(
    image: &[u8],
    shape: [usize; 3],
    crop: CropBox,
    size: usize,
    flip: bool,
    out: &mut [f32],
) {
    let [channels, height, width] = shape;
    debug_assert!(crop.top + crop.height <= height && crop.left + crop.width <= width);
    debug_assert_eq!(out.len(), channels * size * size);
    let rows = taps(crop.height, size);
    let mut cols = taps(crop.width, size);
    if flip {
        cols.reverse();
    }
    for (plane, out_plane) in image
        .chunks_exact(height * width)
        .zip(out.chunks_exact_mut(size * size))
    {
        for (&(y0, y1, ly), out_row) in rows.iter().zip(out_plane.chunks_exact_mut(size)) {
            let row0 = &plane[(crop.top + y0) * width + crop.left..][..crop.width];
            let row1 = &plane[(crop.top + y1) * width + crop.left..][..crop.width];
            for (&(x0, x1, lx), o) in cols.iter().zip(out_row.iter_mut()) {
                let top = (1.0 - lx) * f32::from(row0[x0]) + lx * f32::from(row0[x1]);
                let bottom = (1.0 - lx) * f32::from(row1[x0]) + lx * f32::from(row1[x1]);
                let value = (1.0 - ly) * top + ly * bottom;
                *o = normalise(value.round().clamp(0.0, 255.0) as u8);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Inverse of `normalise`, exact on its outputs.
    fn byte(v: f32) -> u8 {
        ((v * 0.5 + 0.5) * 255.0).round() as u8
    }

    fn resize(image: &[u8], shape: [usize; 3], crop: CropBox, size: usize, flip: bool) -> Vec<u8> {
        let mut out = vec![0.0; shape[0] * size * size];
        resize_into(image, shape, crop, size, flip, &mut out);
        out.into_iter().map(byte).collect()
    }

    fn ramp(n: usize, shape: [usize; 3]) -> Dataset {
        let len = n * shape.iter().product::<usize>();
        let pixels = (0..len).map(|v| (v * 37 % 256) as u8).collect();
        Dataset::new(pixels, (0..n as u32).map(|l| l % 3).collect(), shape, 3).unwrap()
    }

    #[test]
    fn resize_of_a_constant_image_is_constant() {
        for (shape, size) in [
            ([3, 32, 32], 224),
            ([1, 5, 7], 9),
            ([2, 4, 4], 3),
            ([1, 1, 1], 6),
        ] {
            let image = vec![173; shape.iter().product()];
            let whole = CropBox::whole(shape[1], shape[2]);
            let out = resize(&image, shape, whole, size, false);
            assert!(out.iter().all(|&v| v == 173), "{shape:?} -> {size}");
        }
    }

    /// `F.interpolate(torch.tensor([[[[0., 40.], [80., 120.]]]]), size=(4, 4),
    /// mode="bilinear", align_corners=False)`
    #[test]
    fn resize_matches_pytorch_bilinear() {
        let out = resize(&[0, 40, 80, 120], [1, 2, 2], CropBox::whole(2, 2), 4, false);
        let expected = [
            0, 10, 30, 40, 20, 30, 50, 60, 60, 70, 90, 100, 80, 90, 110, 120,
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn resizing_a_crop_to_its_own_size_copies_it() {
        let ds = ramp(1, [3, 6, 5]);
        let crop = CropBox {
            top: 1,
            left: 0,
            height: 5,
            width: 5,
        };
        let out = resize(ds.pixels(), [3, 6, 5], crop, 5, false);
        for c in 0..3 {
            for y in 0..5 {
                for x in 0..5 {
                    assert_eq!(
                        out[(c * 5 + y) * 5 + x],
                        ds.pixels()[(c * 6 + y + 1) * 5 + x]
                    );
                }
            }
        }
    }

    #[test]
    fn a_flip_is_a_mirror_image() {
        let ds = ramp(1, [3, 8, 8]);
        let crop = CropBox {
            top: 1,
            left: 2,
            height: 5,
            width: 6,
        };
        let plain = resize(ds.pixels(), [3, 8, 8], crop, 11, false);
        let flipped = resize(ds.pixels(), [3, 8, 8], crop, 11, true);
        for c in 0..3 {
            for y in 0..11 {
                for x in 0..11 {
                    let at = |x: usize| (c * 11 + y) * 11 + x;
                    assert_eq!(flipped[at(x)], plain[at(10 - x)]);
                }
            }
        }
        assert_ne!(plain, flipped);
    }

    #[test]
    fn crops_stay_inside_the_image() {
        for (h, w) in [
            (32, 32),
            (1, 1),
            (2, 7),
            (7, 2),
            (50, 3),
            (3, 50),
            (224, 100),
        ] {
            for seed in 0..200 {
                let mut rng = sample_rng(seed, 0);
                let c = random_resized_crop(h, w, &mut rng);
                assert!(c.height > 0 && c.width > 0, "{h}x{w}: {c:?}");
                assert!(
                    c.top + c.height <= h && c.left + c.width <= w,
                    "{h}x{w}: {c:?}"
                );
            }
        }
    }

    #[test]
    fn central_crop_follows_torchvision() {
        // Too tall: keep the width, height = round(w / (3/4)).
        assert_eq!(
            central_crop(50, 3),
            CropBox {
                top: 23,
                left: 0,
                height: 4,
                width: 3
            }
        );
        // Too wide: keep the height, width = round(h * 4/3).
        assert_eq!(
            central_crop(3, 50),
            CropBox {
                top: 0,
                left: 23,
                height: 3,
                width: 4
            }
        );
        assert_eq!(central_crop(32, 32), CropBox::whole(32, 32));
    }

    #[test]
    fn crops_cover_the_documented_area_range() {
        let (mut smallest, mut largest) = (f64::MAX, 0.0f64);
        for seed in 0..2000 {
            let c = random_resized_crop(32, 32, &mut sample_rng(seed, 0));
            let frac = (c.height * c.width) as f64 / 1024.0;
            smallest = smallest.min(frac);
            largest = largest.max(frac);
        }
        assert!(smallest < 0.12 && largest > 0.9, "{smallest} {largest}");
    }

    fn batch(source: &Augmented, indices: &[usize], seed: u64) -> Vec<f32> {
        let len: usize = source.sample_shape().iter().product();
        let mut x = vec![0.0; indices.len() * len];
        let mut t = vec![0; indices.len()];
        source.fill_batch(indices, seed, &mut x, &mut t).unwrap();
        assert_eq!(t, indices.iter().map(|&i| i % 3).collect::<Vec<_>>());
        x
    }

    #[test]
    fn same_seed_same_batch_and_different_seeds_differ() {
        let train = Augmented::train(ramp(6, [3, 32, 32]), 40).unwrap();
        let indices = [5, 0, 3, 3, 1, 2];
        assert_eq!(batch(&train, &indices, 9), batch(&train, &indices, 9));
        assert_ne!(batch(&train, &indices, 9), batch(&train, &indices, 10));
        // Two batch positions holding the same sample are augmented differently.
        let x = batch(&train, &indices, 9);
        let len = 3 * 40 * 40;
        assert_ne!(x[2 * len..3 * len], x[3 * len..4 * len]);
    }

    #[test]
    fn a_batch_filled_in_parts_is_the_whole_batch() {
        let train = Augmented::train(ramp(6, [3, 32, 32]), 40).unwrap();
        let indices = [5, 0, 3, 4, 1, 2];
        let whole = batch(&train, &indices, 9);
        let len = 3 * 40 * 40;
        let mut parts = Vec::new();
        for (first, part) in [(0, &indices[..2]), (2, &indices[2..])] {
            let mut x = vec![0.0; part.len() * len];
            let mut t = vec![0; part.len()];
            train.fill_batch_at(part, 9, first, &mut x, &mut t).unwrap();
            parts.extend(x);
        }
        assert_eq!(parts, whole);
    }

    #[test]
    fn batches_do_not_depend_on_the_number_of_threads() {
        let train = Augmented::train(ramp(20, [3, 16, 16]), 24).unwrap();
        let indices: Vec<usize> = (0..20).rev().collect();
        let on = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| batch(&train, &indices, 3))
        };
        assert_eq!(on(1), on(2));
        assert_eq!(on(1), on(3));
    }

    #[test]
    fn test_pipeline_ignores_the_seed() {
        let test = Augmented::test(ramp(3, [3, 32, 32]), 224).unwrap();
        assert_eq!(test.sample_shape(), [3, 224, 224]);
        assert!(!test.is_train());
        assert_eq!(batch(&test, &[0, 2], 1), batch(&test, &[0, 2], 2));
    }

    #[test]
    fn size_zero_and_bad_batches_are_errors() {
        assert!(Augmented::train(ramp(1, [3, 4, 4]), 0).is_err());
        assert!(Augmented::test(ramp(1, [3, 4, 4]), usize::MAX).is_err());
        let a = Augmented::train(ramp(2, [3, 4, 4]), 5).unwrap();
        let mut x = vec![0.0; 75];
        let mut t = vec![0; 1];
        assert!(matches!(
            a.fill_batch(&[2], 0, &mut x, &mut t),
            Err(Error::InvalidConfig { .. })
        ));
        assert!(matches!(
            a.fill_batch(&[0], 0, &mut x[1..], &mut t),
            Err(Error::Shape { .. })
        ));
    }
}
