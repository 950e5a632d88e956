//! Downloading MNIST and Fashion-MNIST (cargo feature `download`).
//!
//! Each of the four IDX files comes over HTTPS from the first public mirror that serves it,
//! and is kept only if the SHA-256 of its decompressed contents is the published one: the
//! bytes of a gzip file differ between mirrors that recompressed it, its contents do not.
//! A file is written under a temporary name and renamed once verified, so an interrupted or
//! corrupt download never leaves a file that the readers would take for the dataset. Files
//! already present and valid are not fetched again.
//!
//! CIFAR-10 and CIFAR-100 are not offered: their archives' contents have no published
//! checksums to verify against.
//!
//! ```no_run
//! use fdfa::data::{DatasetName, download};
//! let dir = std::path::Path::new("data/mnist");
//! download(DatasetName::Mnist, dir, &mut |p| {
//!     eprintln!("{}: {} of {:?} bytes", p.file, p.done, p.total);
//! })?;
//! let (train, test) = fdfa::data::load(DatasetName::Mnist, Some(dir))?;
//! # Ok::<(), fdfa::Error>(())
//! ```

use std::fs::{self, File};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

use super::DatasetName;
use crate::error::{DataErrorKind, Error, Result};

/// Where each dataset is served, tried in order: the mirrors PyTorch's torchvision and
/// TensorFlow use for MNIST, and the Fashion-MNIST repository.
const MNIST_MIRRORS: [&str; 2] = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
];
const FASHION_MNIST_MIRRORS: [&str; 1] =
    ["https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"];

/// The four files of a dataset with the SHA-256 of their decompressed contents.
const MNIST_FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    ),
    (
        "train-labels-idx1-ubyte",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    ),
    (
        "t10k-images-idx3-ubyte",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    ),
];
const FASHION_MNIST_FILES: [(&str, &str); 4] = [
    (
        "train-images-idx3-ubyte",
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    ),
    (
        "train-labels-idx1-ubyte",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    ),
    (
        "t10k-images-idx3-ubyte",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    ),
    (
        "t10k-labels-idx1-ubyte",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    ),
];

/// How far a file's transfer has come, for a progress bar.
#[derive(Clone, Copy, Debug)]
pub struct Progress<'a> {
    /// The file being fetched, e.g. `train-images-idx3-ubyte.gz`.
    pub file: &'a str,
    /// Bytes received so far.
    pub done: u64,
    /// The file's size, when the server announced it.
    pub total: Option<u64>,
}

/// Downloads `name` (MNIST or Fashion-MNIST) into the folder `dir` (created if needed) from
/// its public mirrors, verifying every file; returns `dir`. `progress` is called as bytes
/// arrive.
///
/// # Errors
/// [`Error::InvalidConfig`] for CIFAR; [`Error::Download`] when no mirror served a file
/// (naming each URL tried and why it failed, a checksum mismatch included);
/// [`Error::Io`] when the folder or a file cannot be written.
pub fn download(
    name: DatasetName,
    dir: &Path,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<PathBuf> {
    let mirrors: &[&str] = match name {
        DatasetName::Mnist => &MNIST_MIRRORS,
        DatasetName::FashionMnist => &FASHION_MNIST_MIRRORS,
        _ => &[],
    };
    download_from(name, dir, mirrors, progress)
}

/// [`download`] from the given mirrors (base URLs ending in `/`), tried in order: a mirror
/// of your own, or a server on the loopback interface in tests.
///
/// # Errors
/// As [`download`].
pub fn download_from(
    name: DatasetName,
    dir: &Path,
    mirrors: &[&str],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<PathBuf> {
    let files = match name {
        DatasetName::Mnist => &MNIST_FILES,
        DatasetName::FashionMnist => &FASHION_MNIST_FILES,
        DatasetName::Cifar10 | DatasetName::Cifar100 => {
            return Err(Error::config(
                "download",
                "dataset",
                format!(
                    "{name} has no published checksums to verify a download against; \
                     get it from https://www.cs.toronto.edu/~kriz/cifar.html"
                ),
            ));
        }
    };
    fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for (base, sha256) in files {
        let file = format!("{base}.gz");
        let target = dir.join(&file);
        if decompressed_sha256(&target).is_ok_and(|h| h == *sha256) {
            continue;
        }
        let mut failures = Vec::new();
        let fetched = mirrors.iter().any(|mirror| {
            let url = format!("{mirror}{file}");
            match fetch_verified(&url, &target, &file, sha256, progress) {
                Ok(()) => true,
                Err(Error::Download { tried, .. }) => {
                    failures.push(format!("{url}: {tried}"));
                    false
                }
                Err(e) => {
                    failures.push(format!("{url}: {e}"));
                    false
                }
            }
        });
        if !fetched {
            return Err(Error::Download {
                file,
                tried: if failures.is_empty() {
                    "no mirror given".into()
                } else {
                    failures.join("; ")
                },
            });
        }
    }
    Ok(dir.to_path_buf())
}

/// Fetches `url` into `target` through a temporary file, keeping it only if its
/// decompressed contents hash to `sha256`.
fn fetch_verified(
    url: &str,
    target: &Path,
    file: &str,
    sha256: &str,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<()> {
    let part = target.with_extension("gz.part");
    let io = |source| Error::Io {
        path: part.clone(),
        source,
    };
    let result = (|| {
        let response = ureq::get(url).call().map_err(|e| Error::Download {
            file: file.to_string(),
            tried: e.to_string(),
        })?;
        let total = response.body().content_length();
        let mut body = response.into_body().into_reader();
        let mut out = File::create(&part).map_err(io)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut done = 0u64;
        loop {
            let n = body.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(io)?;
            done += n as u64;
            progress(Progress { file, done, total });
        }
        if let Some(total) = total.filter(|&t| t != done) {
            return Err(Error::Data {
                path: part.clone(),
                kind: DataErrorKind::Truncated {
                    expected: total,
                    found: done,
                },
            });
        }
        out.sync_all().map_err(io)?;
        drop(out);
        let found = decompressed_sha256(&part)?;
        if found != sha256 {
            return Err(Error::Data {
                path: part.clone(),
                kind: DataErrorKind::Checksum {
                    expected: sha256.to_string(),
                    got: found,
                },
            });
        }
        fs::rename(&part, target).map_err(io)
    })();
    if result.is_err() {
        // Nothing half-written stays behind; a missing file is fine.
        let _ = fs::remove_file(&part);
    }
    result
}

/// The SHA-256 (hex) of the decompressed contents of the gzip file `path`.
fn decompressed_sha256(path: &Path) -> Result<String> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut gz = MultiGzDecoder::new(BufReader::new(file));
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = gz.read(&mut buf).map_err(|e| Error::Data {
            path: path.to_path_buf(),
            kind: DataErrorKind::CorruptGzip {
                detail: e.to_string(),
            },
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}
