//! IDX readers (the format of MNIST and Fashion-MNIST), raw or gzip-compressed.
//!
//! A file is taken as gzip when it starts with the gzip magic bytes `1f 8b`, whatever its
//! name. Hostile input is refused before any large allocation:
//!
//! - a raw file's header counts are checked against the file's length;
//! - a gzip file's header counts are checked against the most its compressed length can
//!   expand to (deflate never expands more than [`MAX_DEFLATE_RATIO`] to one), and the
//!   decompression reads at most the announced size plus one byte, so neither a gzip bomb nor
//!   a lying header makes the reader allocate more than the header announces.

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::Dataset;
use super::regular::{open_data, probe};
use crate::error::{DataErrorKind, Error, Result};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub(crate) const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub(crate) const LABELS_MAGIC: u32 = 0x0000_0801;
/// Deflate's maximum expansion: 258 bytes out per 2 bits in (1032:1); a gzip file cannot
/// decompress to more than this many times its length.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;
/// The most a reader reserves up front; larger payloads grow as they are actually read.
const MAX_PREALLOC: u64 = 64 << 20;
/// Gzip's magic bytes.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Number of classes of MNIST and Fashion-MNIST.
const MNIST_CLASSES: usize = 10;

/// An opened IDX file: its reader (raw or decompressing), and what bounds its content.
struct Source {
    path: PathBuf,
    reader: Box<dyn Read>,
    /// Length of the file on disk.
    file_len: u64,
    gzip: bool,
}

impl Source {
    fn open(path: &Path) -> Result<Self> {
        let (file, file_len) = open_data(path)?;
        let mut file = BufReader::new(file);
        let mut magic = [0u8; 2];
        let got = read_full(&mut file, &mut magic).map_err(|e| Error::io(path, e))?;
        let gzip = got == 2 && magic == GZIP_MAGIC;
        // Put the sniffed bytes back in front of the stream.
        let reader = io::Cursor::new(magic[..got].to_vec()).chain(file);
        let reader: Box<dyn Read> = if gzip {
            Box::new(MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        Ok(Self {
            path: path.to_path_buf(),
            reader,
            file_len,
            gzip,
        })
    }

    /// Maps an error of the underlying reader: the decoder's are corrupt gzip, the file's are
    /// I/O errors.
    fn read_error(&self, e: io::Error) -> Error {
        if self.gzip {
            let detail = e.to_string();
            Error::data(&self.path, DataErrorKind::CorruptGzip { detail })
        } else {
            Error::io(&self.path, e)
        }
    }

    /// Reads the next `N` bytes of a header of `header_len` bytes, `offset` bytes into the
    /// file; a shorter content is truncated.
    fn header<const N: usize>(&mut self, offset: u64, header_len: u64) -> Result<[u8; N]> {
        let mut buf = [0u8; N];
        let got = read_full(&mut self.reader, &mut buf).map_err(|e| self.read_error(e))?;
        if got < N {
            return Err(Error::data(
                &self.path,
                DataErrorKind::Truncated {
                    expected: header_len,
                    found: offset + got as u64,
                },
            ));
        }
        Ok(buf)
    }

    /// Reads the magic number and checks it, so that the wrong kind of file is named as such
    /// whatever its length.
    fn magic(&mut self, expected: u32, header_len: u64) -> Result<()> {
        let found = be_u32(self.header(0, header_len)?);
        if found == expected {
            Ok(())
        } else {
            Err(Error::data(
                &self.path,
                DataErrorKind::BadMagic { expected, found },
            ))
        }
    }

    /// Reads a payload of exactly `payload` bytes after a `header`-byte header, refusing
    /// (before allocating) a payload the file cannot hold.
    fn payload(mut self, header: u64, payload: u64) -> Result<Vec<u8>> {
        let total = header.saturating_add(payload);
        if self.gzip {
            let most = self.file_len.saturating_mul(MAX_DEFLATE_RATIO);
            if total > most {
                return Err(Error::data(
                    &self.path,
                    DataErrorKind::SizeMismatch {
                        detail: format!(
                            "the header announces {total} bytes, more than a gzip file of {} \
                             bytes can hold (at most {most})",
                            self.file_len
                        ),
                    },
                ));
            }
        } else if total != self.file_len {
            let kind = if total > self.file_len {
                DataErrorKind::Truncated {
                    expected: total,
                    found: self.file_len,
                }
            } else {
                DataErrorKind::SizeMismatch {
                    detail: format!(
                        "the header announces {total} bytes but the file holds {}",
                        self.file_len
                    ),
                }
            };
            return Err(Error::data(&self.path, kind));
        }
        // A raw payload was checked against the file's length; a gzip one grows as it is
        // actually decompressed beyond the first `MAX_PREALLOC` bytes.
        let reserve = if self.gzip {
            payload.min(MAX_PREALLOC)
        } else {
            payload
        };
        let capacity = usize::try_from(reserve).unwrap_or(0);
        let mut buf = Vec::with_capacity(capacity);
        // One byte more than announced, to tell "exactly" from "too much".
        let limit = payload.saturating_add(1);
        let result = (&mut self.reader).take(limit).read_to_end(&mut buf);
        if let Err(e) = result {
            return Err(self.read_error(e));
        }
        let got = buf.len() as u64;
        if got < payload {
            return Err(Error::data(
                &self.path,
                DataErrorKind::Truncated {
                    expected: total,
                    found: header + got,
                },
            ));
        }
        if got > payload {
            return Err(Error::data(
                &self.path,
                DataErrorKind::SizeMismatch {
                    detail: format!("the content runs past the {total} bytes the header announces"),
                },
            ));
        }
        Ok(buf)
    }
}

/// Reads until `buf` is full or the stream ends; returns the number of bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn be_u32(bytes: [u8; 4]) -> u32 {
    u32::from_be_bytes(bytes)
}

/// Reads an IDX file of images (magic `0x00000803`), raw or gzip-compressed.
///
/// Returns the pixels (image after image, each row-major), the number of images, the number
/// of rows and the number of columns.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read; [`Error::Data`] naming the file with
/// [`DataErrorKind::BadMagic`] for another magic number, [`DataErrorKind::Truncated`] when
/// the file ends before the header or the pixels it announces,
/// [`DataErrorKind::SizeMismatch`] when the file holds more than announced (or a gzip file
/// announces more than it can hold), and [`DataErrorKind::CorruptGzip`] for a broken gzip
/// stream.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("fdfa-doc-idx-{}", std::process::id()));
/// let mut bytes = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3];
/// bytes.extend([1, 2, 3, 4, 5, 6]);
/// std::fs::write(&path, &bytes)?;
/// let (pixels, n, rows, cols) = fdfa::data::read_idx_images(&path)?;
/// assert_eq!((n, rows, cols), (2, 1, 3));
/// assert_eq!(pixels, [1, 2, 3, 4, 5, 6]);
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize)> {
    let mut source = Source::open(path)?;
    source.magic(IMAGES_MAGIC, 16)?;
    let dims: [u8; 12] = source.header(4, 16)?;
    let word = |at: usize| be_u32([dims[at], dims[at + 1], dims[at + 2], dims[at + 3]]);
    let (n, rows, cols) = (word(0), word(4), word(8));
    let payload = u64::from(n)
        .checked_mul(u64::from(rows))
        .and_then(|v| v.checked_mul(u64::from(cols)))
        .filter(|&v| usize::try_from(v).is_ok())
        .ok_or_else(|| {
            Error::data(
                path,
                DataErrorKind::SizeMismatch {
                    detail: format!("{n} images of {rows}x{cols} overflow the address space"),
                },
            )
        })?;
    let pixels = source.payload(16, payload)?;
    // Widening: fdfa needs pointers of at least 32 bits (as rayon and ndarray do).
    Ok((pixels, n as usize, rows as usize, cols as usize))
}

/// Reads an IDX file of labels (magic `0x00000801`), raw or gzip-compressed.
///
/// # Errors
///
/// As [`read_idx_images`]: [`Error::Io`], or [`Error::Data`] naming the file with
/// [`DataErrorKind::BadMagic`], [`DataErrorKind::Truncated`],
/// [`DataErrorKind::SizeMismatch`] or [`DataErrorKind::CorruptGzip`].
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let path = std::env::temp_dir().join(format!("fdfa-doc-labels-{}", std::process::id()));
/// std::fs::write(&path, [0, 0, 8, 1, 0, 0, 0, 3, 5, 0, 4])?;
/// assert_eq!(fdfa::data::read_idx_labels(&path)?, [5, 0, 4]);
/// # std::fs::remove_file(&path)?;
/// # Ok(())
/// # }
/// ```
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let mut source = Source::open(path)?;
    source.magic(LABELS_MAGIC, 8)?;
    let n = be_u32(source.header(4, 8)?);
    source.payload(8, u64::from(n))
}

/// The path of `base` in `dir`, compressed (`base.gz`) or not; the compressed one wins when
/// both exist. Anything there counts, not only a regular file, so that a folder, a FIFO or a
/// symbolic link loop in a file's place is reported as such when it is opened.
pub(crate) fn find_idx_file(dir: &Path, base: &str) -> Option<PathBuf> {
    [dir.join(format!("{base}.gz")), dir.join(base)]
        .into_iter()
        .find(|p| !matches!(probe(p), Ok(None)))
}

fn require_idx_file(dir: &Path, base: &str) -> Result<PathBuf> {
    find_idx_file(dir, base).ok_or_else(|| {
        Error::io(
            dir.join(base),
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("neither `{base}` nor `{base}.gz` exists in this folder"),
            ),
        )
    })
}

/// Loads one split (`train` or `t10k`) of an MNIST-layout folder.
fn load_split(dir: &Path, split: &str) -> Result<Dataset> {
    let images_path = require_idx_file(dir, &format!("{split}-images-idx3-ubyte"))?;
    let labels_path = require_idx_file(dir, &format!("{split}-labels-idx1-ubyte"))?;
    let (pixels, n, rows, cols) = read_idx_images(&images_path)?;
    if n == 0 {
        return Err(Error::data(
            &images_path,
            DataErrorKind::Empty {
                what: "images (the header's count is 0)".to_string(),
            },
        ));
    }
    let labels = read_idx_labels(&labels_path)?;
    if labels.len() != n {
        return Err(Error::data(
            &labels_path,
            DataErrorKind::SizeMismatch {
                detail: format!(
                    "{} labels, but {} holds {n} images",
                    labels.len(),
                    images_path.display()
                ),
            },
        ));
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|&(_, &l)| usize::from(l) >= MNIST_CLASSES)
    {
        return Err(Error::data(
            &labels_path,
            DataErrorKind::LabelOutOfRange {
                label: u32::from(label),
                index,
                classes: MNIST_CLASSES,
            },
        ));
    }
    let labels = labels.into_iter().map(u32::from).collect();
    Dataset::new(pixels, labels, [1, rows, cols], MNIST_CLASSES)
}

/// Loads MNIST from `dir`, the folder holding `train-images-idx3-ubyte`,
/// `train-labels-idx1-ubyte`, `t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte`, each
/// raw or gzip-compressed (with or without the `.gz` suffix). Returns `(train, test)`, with
/// samples of shape `[1, rows, cols]` and 10 classes.
///
/// # Errors
///
/// [`Error::Io`] when a file is missing or unreadable; [`Error::Data`] naming the file when
/// a file is malformed (see [`read_idx_images`]), when the number of labels differs from the
/// number of images ([`DataErrorKind::SizeMismatch`]) or a label is not below 10
/// ([`DataErrorKind::LabelOutOfRange`]), an images file holding no image
/// ([`DataErrorKind::Empty`]), and something other than a regular file in a file's place
/// ([`DataErrorKind::NotRegular`]); [`Error::InvalidConfig`] for images with zero rows or
/// columns.
///
/// ```
/// # fn main() -> fdfa::Result<()> {
/// # if !std::path::Path::new("data/mnist").exists() { return Ok(()); } // not packaged
/// let (train, test) = fdfa::data::load_mnist(std::path::Path::new("data/mnist"))?;
/// assert_eq!((train.len(), test.len()), (60_000, 10_000));
/// assert_eq!(train.sample_shape(), [1, 28, 28]);
/// # Ok(())
/// # }
/// ```
pub fn load_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    Ok((load_split(dir, "train")?, load_split(dir, "t10k")?))
}

/// Loads Fashion-MNIST from `dir`; the files have the same names and layout as MNIST's (see
/// [`load_mnist`]). Returns `(train, test)`.
///
/// # Errors
///
/// As [`load_mnist`].
///
/// ```no_run
/// # fn main() -> fdfa::Result<()> {
/// let dir = std::path::Path::new("/usr/share/datasets/fashion-mnist");
/// let (train, test) = fdfa::data::load_fashion_mnist(dir)?;
/// assert_eq!((train.len(), test.len()), (60_000, 10_000));
/// # Ok(())
/// # }
/// ```
pub fn load_fashion_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    load_mnist(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn be_u32_reads_big_endian() {
        assert_eq!(be_u32([0, 0, 8, 3]), IMAGES_MAGIC);
        assert_eq!(be_u32([0, 0, 0xea, 0x60]), 60_000);
    }

    #[test]
    fn read_full_stops_at_end_of_stream() {
        let mut buf = [0u8; 4];
        assert_eq!(read_full(&mut &[1u8, 2][..], &mut buf).unwrap(), 2);
        assert_eq!(buf[..2], [1, 2]);
    }
}
