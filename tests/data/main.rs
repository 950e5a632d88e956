//! Dataset readers: the real MNIST files shipped in `data/mnist`, and small files written
//! here in the official layouts, valid and broken. Every failure asserts the error variant and
//! that the message names the file.
//!
//! One binary (`cargo test --test data`), one file per subject.

#[path = "../common/mod.rs"]
mod common;

mod cifar;
mod features;
mod idx;
mod locate;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use fdfa::data::{DataSource, load_mnist, read_idx_images};
use fdfa::{DataErrorKind, Error};
use flate2::Compression;
use flate2::write::GzEncoder;

/// A fresh folder under the system's temporary folder, removed on drop.
struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fdfa-data-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    /// Writes `bytes` to `name` in this folder and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [0x0803, n, rows, cols] {
        bytes.extend(u32::to_be_bytes(word));
    }
    bytes.extend(pixels);
    bytes
}

pub fn idx_labels(n: u32, labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for word in [0x0801, n] {
        bytes.extend(u32::to_be_bytes(word));
    }
    bytes.extend(labels);
    bytes
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// The kind of an [`Error::Data`] about `path`; panics on any other error, and checks that
/// the message names the file.
pub fn data_kind<T: std::fmt::Debug>(result: fdfa::Result<T>, path: &Path) -> DataErrorKind {
    let err = result.unwrap_err();
    let file = path.file_name().unwrap().to_str().unwrap();
    assert!(
        err.to_string().contains(file),
        "`{err}` does not name {file}"
    );
    match err {
        Error::Data { path: p, kind } => {
            assert_eq!(p, path);
            kind
        }
        other => panic!("expected Error::Data, got {other:?}"),
    }
}

#[test]
fn real_mnist_has_the_published_counts_shapes_and_labels() {
    let Some(dir) = common::mnist_or_skip("real_mnist_has_the_published_counts_shapes_and_labels")
    else {
        return;
    };
    let (train, test) = load_mnist(&dir).unwrap();
    assert_eq!((train.len(), test.len()), (60_000, 10_000));
    assert_eq!(train.sample_shape(), [1, 28, 28]);
    assert_eq!(test.sample_shape(), [1, 28, 28]);
    assert_eq!(train.classes(), 10);
    assert_eq!(train.labels()[..4], [5, 0, 4, 1]);
    assert_eq!(test.labels()[0], 7);
    for ds in [&train, &test] {
        assert_eq!(ds.pixels().len(), ds.len() * 784);
        assert_eq!(ds.pixels().iter().min(), Some(&0));
        assert_eq!(ds.pixels().iter().max(), Some(&255));
        let mut seen = [false; 10];
        for &l in ds.labels() {
            seen[l as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }

    let indices: Vec<usize> = (0..64).collect();
    let mut x = vec![0.0; 64 * 784];
    let mut targets = vec![0; 64];
    train.fill_batch(&indices, 0, &mut x, &mut targets).unwrap();
    assert_eq!(targets[..4], [5, 0, 4, 1]);
    assert!(x.iter().all(|v| (-1.0..=1.0).contains(v)));
    assert!(x.contains(&-1.0) && x.contains(&1.0));

    let (pixels, n, rows, cols) = read_idx_images(&dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    assert_eq!((n, rows, cols), (10_000, 28, 28));
    assert_eq!(pixels, test.pixels());
}

/// `DataErrorKind::Truncated { expected, found }`.
pub fn truncated(expected: u64, found: u64) -> DataErrorKind {
    DataErrorKind::Truncated { expected, found }
}

/// `DataErrorKind::BadMagic { expected, found }`.
pub fn bad_magic(expected: u32, found: u32) -> DataErrorKind {
    DataErrorKind::BadMagic { expected, found }
}
