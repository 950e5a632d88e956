//! CIFAR-10 and CIFAR-100 readers, for the "binary version" of the official distributions.
//!
//! A CIFAR-10 record is one label byte followed by 3072 pixel bytes; a CIFAR-100 record is a
//! coarse label byte, a fine label byte, then the 3072 pixel bytes. The pixels are the red,
//! then green, then blue planes of a 32x32 image, each row-major, which is already the
//! `C×H×W` order of a [`Dataset`]. CIFAR-100 is read with its fine labels (100 classes).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::Dataset;
use super::regular::open_data;
use crate::error::{DataErrorKind, Error, Result};

/// Shape of a CIFAR image.
const SAMPLE_SHAPE: [usize; 3] = [3, 32, 32];
/// Bytes of pixels per record.
const PIXELS: usize = 3 * 32 * 32;

/// One of the two record layouts.
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Bytes before the pixels.
    label_bytes: usize,
    /// Which of those bytes is the label used.
    label_at: usize,
    classes: usize,
}

const CIFAR10: Layout = Layout {
    label_bytes: 1,
    label_at: 0,
    classes: 10,
};

const CIFAR100: Layout = Layout {
    label_bytes: 2,
    label_at: 1,
    classes: 100,
};

impl Layout {
    fn record(self) -> usize {
        self.label_bytes + PIXELS
    }
}

/// Reads a whole file whose length has been checked against `len`.
fn read_exactly(path: &Path, file: File, len: u64) -> Result<Vec<u8>> {
    let capacity = usize::try_from(len).map_err(|_| {
        Error::data(
            path,
            DataErrorKind::SizeMismatch {
                detail: format!("{len} bytes do not fit in memory"),
            },
        )
    })?;
    let mut buf = Vec::with_capacity(capacity);
    // At most one byte more than the length just read, should the file grow meanwhile.
    file.take(len.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 != len {
        return Err(Error::data(
            path,
            DataErrorKind::SizeMismatch {
                detail: format!(
                    "the file changed while being read ({len} bytes, then {})",
                    buf.len()
                ),
            },
        ));
    }
    Ok(buf)
}

/// Appends the records of `path` to `pixels` and `labels`.
fn read_batch_into(
    path: &Path,
    layout: Layout,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<()> {
    let (file, len) = open_data(path)?;
    let record = layout.record() as u64;
    let (whole, rem) = (len / record, len % record);
    // A few bytes past whole records were appended; most of a record is one cut short.
    if whole > 0 && rem > 0 && rem < record / 2 {
        return Err(Error::data(
            path,
            DataErrorKind::SizeMismatch {
                detail: format!(
                    "too long: {len} bytes, {rem} more than {whole} whole record(s) of \
                     {record} bytes"
                ),
            },
        ));
    }
    if len == 0 || rem != 0 {
        return Err(Error::data(
            path,
            DataErrorKind::Truncated {
                expected: (whole + 1) * record,
                found: len,
            },
        ));
    }
    let bytes = read_exactly(path, file, len)?;
    let count = bytes.len() / layout.record();
    pixels.reserve(count * PIXELS);
    labels.reserve(count);
    for (index, rec) in bytes.chunks_exact(layout.record()).enumerate() {
        let (head, image) = rec.split_at(layout.label_bytes);
        let label = head.get(layout.label_at).copied().unwrap_or(u8::MAX);
        if usize::from(label) >= layout.classes {
            return Err(Error::data(
                path,
                DataErrorKind::LabelOutOfRange {
                    label: u32::from(label),
                    index,
                    classes: layout.classes,
                },
            ));
        }
        labels.push(u32::from(label));
        pixels.extend_from_slice(image);
    }
    Ok(())
}

fn read_batches(paths: &[PathBuf], layout: Layout) -> Result<Dataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        read_batch_into(path, layout, &mut pixels, &mut labels)?;
    }
    Dataset::new(pixels, labels, SAMPLE_SHAPE, layout.classes)
}

/// Reads one CIFAR-10 binary batch file (e.g. `data_batch_1.bin`): samples of shape
/// `[3, 32, 32]`, 10 classes.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] naming the file with
/// [`DataErrorKind::Truncated`] when its size is not a positive multiple of the 3073-byte
/// record, or [`DataErrorKind::LabelOutOfRange`] (with the record's index) for a label of 10
/// or more.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("fdfa-doc-cifar10-{}", std::process::id()));
/// let mut record = vec![7u8];
/// record.extend(std::iter::repeat_n(200u8, 3072));
/// std::fs::write(&path, &record)?;
/// let batch = fdfa::data::read_cifar10_batch(&path)?;
/// assert_eq!(batch.labels(), &[7]);
/// assert_eq!(batch.sample_shape(), [3, 32, 32]);
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
pub fn read_cifar10_batch(path: &Path) -> Result<Dataset> {
    read_batches(&[path.to_path_buf()], CIFAR10)
}

/// Reads one CIFAR-100 binary file (`train.bin` or `test.bin`) with its fine labels: samples
/// of shape `[3, 32, 32]`, 100 classes.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] naming the file with
/// [`DataErrorKind::Truncated`] when its size is not a positive multiple of the 3074-byte
/// record, or [`DataErrorKind::LabelOutOfRange`] for a fine label of 100 or more.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("fdfa-doc-cifar100-{}", std::process::id()));
/// let mut record = vec![3u8, 42]; // coarse label, fine label
/// record.extend(std::iter::repeat_n(0u8, 3072));
/// std::fs::write(&path, &record)?;
/// let batch = fdfa::data::read_cifar100_batch(&path)?;
/// assert_eq!(batch.labels(), &[42]);
/// assert_eq!(batch.classes(), 100);
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
pub fn read_cifar100_batch(path: &Path) -> Result<Dataset> {
    read_batches(&[path.to_path_buf()], CIFAR100)
}

/// The training files of CIFAR-10, in the order they are concatenated.
pub(crate) const CIFAR10_TRAIN: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test file of CIFAR-10.
pub(crate) const CIFAR10_TEST: &str = "test_batch.bin";
/// The training file of CIFAR-100.
pub(crate) const CIFAR100_TRAIN: &str = "train.bin";
/// The test file of CIFAR-100.
pub(crate) const CIFAR100_TEST: &str = "test.bin";

/// Loads CIFAR-10 from `dir` (the unpacked `cifar-10-batches-bin` folder): the training set
/// is `data_batch_1.bin` to `data_batch_5.bin` in order, the test set `test_batch.bin`.
/// Returns `(train, test)`.
///
/// # Errors
///
/// As [`read_cifar10_batch`], for each of the six files.
///
/// ```no_run
/// # fn main() -> fdfa::Result<()> {
/// let dir = std::path::Path::new("data/cifar-10-batches-bin");
/// let (train, test) = fdfa::data::load_cifar10(dir)?;
/// assert_eq!((train.len(), test.len()), (50_000, 10_000));
/// # Ok(())
/// # }
/// ```
pub fn load_cifar10(dir: &Path) -> Result<(Dataset, Dataset)> {
    let train: Vec<PathBuf> = CIFAR10_TRAIN.iter().map(|f| dir.join(f)).collect();
    Ok((
        read_batches(&train, CIFAR10)?,
        read_batches(&[dir.join(CIFAR10_TEST)], CIFAR10)?,
    ))
}

/// Loads CIFAR-100 with its fine labels from `dir` (the unpacked `cifar-100-binary` folder):
/// `train.bin` and `test.bin`. Returns `(train, test)`.
///
/// # Errors
///
/// As [`read_cifar100_batch`], for each of the two files.
///
/// ```no_run
/// # fn main() -> fdfa::Result<()> {
/// let dir = std::path::Path::new("data/cifar-100-binary");
/// let (train, test) = fdfa::data::load_cifar100(dir)?;
/// assert_eq!((train.len(), test.len()), (50_000, 10_000));
/// assert_eq!(train.classes(), 100);
/// # Ok(())
/// # }
/// ```
pub fn load_cifar100(dir: &Path) -> Result<(Dataset, Dataset)> {
    Ok((
        read_batches(&[dir.join(CIFAR100_TRAIN)], CIFAR100)?,
        read_batches(&[dir.join(CIFAR100_TEST)], CIFAR100)?,
    ))
}
