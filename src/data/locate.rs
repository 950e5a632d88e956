//! Finding a dataset's files on disk and loading it by name.
//!
//! [`locate`] searches, in order:
//!
//! 1. the folder given explicitly (e.g. a `--data-dir` flag), which must then hold the files;
//! 2. `$FDFA_DATA/<folder>`;
//! 3. `./data/<folder>` (the repository ships MNIST there);
//! 4. `/usr/share/datasets/<folder>` (where Debian's `dataset-fashion-mnist` installs).
//!
//! `<folder>` is [`DatasetName::folder`]. A folder holds a dataset when all its files exist
//! (for MNIST and Fashion-MNIST each either gzip-compressed, with `.gz`, or not).

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::cifar::{CIFAR10_TEST, CIFAR10_TRAIN, CIFAR100_TEST, CIFAR100_TRAIN};
use super::idx::find_idx_file;
use super::regular::probe;
use super::{Augmented, DataSource, Dataset, load_cifar10, load_cifar100, load_mnist};
use crate::error::{Error, Result};

/// Environment variable naming a folder that holds dataset folders.
pub const DATA_ENV: &str = "FDFA_DATA";
/// Side of the images CIFAR-100 is resized to for AlexNet.
pub const CIFAR100_SIZE: usize = 224;
/// The system-wide folder searched last.
const SYSTEM_DIR: &str = "/usr/share/datasets";
/// The IDX files of MNIST and Fashion-MNIST (each may also carry a `.gz` suffix).
const IDX_FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// The datasets fdfa can load.
///
/// ```
/// use fdfa::data::DatasetName;
///
/// let name: DatasetName = "cifar100".parse()?;
/// assert_eq!(name, DatasetName::Cifar100);
/// assert_eq!(name.folder(), "cifar-100-binary");
/// assert_eq!(name.classes(), 100);
/// assert_eq!(DatasetName::FashionMnist.to_string(), "fashion-mnist");
/// # Ok::<(), fdfa::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DatasetName {
    /// MNIST handwritten digits, 28x28 grey, 10 classes.
    Mnist,
    /// Fashion-MNIST clothing images, 28x28 grey, 10 classes.
    FashionMnist,
    /// CIFAR-10, 32x32 colour, 10 classes.
    Cifar10,
    /// CIFAR-100 with its fine labels, 32x32 colour, 100 classes.
    Cifar100,
}

impl DatasetName {
    /// Every dataset, in this order: MNIST, Fashion-MNIST, CIFAR-10, CIFAR-100.
    pub const ALL: [Self; 4] = [
        Self::Mnist,
        Self::FashionMnist,
        Self::Cifar10,
        Self::Cifar100,
    ];

    /// The folder that holds the dataset's files: `mnist`, `fashion-mnist`,
    /// `cifar-10-batches-bin` or `cifar-100-binary` (the last two are the folders the official
    /// binary archives unpack into).
    pub fn folder(self) -> &'static str {
        match self {
            Self::Mnist => "mnist",
            Self::FashionMnist => "fashion-mnist",
            Self::Cifar10 => "cifar-10-batches-bin",
            Self::Cifar100 => "cifar-100-binary",
        }
    }

    /// Number of classes.
    pub fn classes(self) -> usize {
        match self {
            Self::Cifar100 => 100,
            _ => 10,
        }
    }

    /// Whether `dir` holds all the dataset's files. Something in a file's place that is not a
    /// regular file (a folder, a FIFO, a symbolic link loop) counts, so that loading names it
    /// rather than reporting the dataset as missing.
    ///
    /// ```
    /// use fdfa::data::DatasetName;
    ///
    /// # if !std::path::Path::new("data/mnist").exists() { return; } // not packaged
    /// assert!(DatasetName::Mnist.is_in(std::path::Path::new("data/mnist")));
    /// assert!(!DatasetName::Cifar10.is_in(std::path::Path::new("data/mnist")));
    /// ```
    pub fn is_in(self, dir: &Path) -> bool {
        match self {
            Self::Mnist | Self::FashionMnist => IDX_FILES
                .iter()
                .all(|base| find_idx_file(dir, base).is_some()),
            Self::Cifar10 => CIFAR10_TRAIN
                .iter()
                .chain([&CIFAR10_TEST])
                .all(|f| present(&dir.join(f))),
            Self::Cifar100 => [CIFAR100_TRAIN, CIFAR100_TEST]
                .iter()
                .all(|f| present(&dir.join(f))),
        }
    }

    /// How to obtain the files.
    fn hint(self) -> String {
        let folder = self.folder();
        match self {
            Self::Mnist => format!(
                "MNIST ships in the fdfa repository's data/{folder}/ (four IDX .gz files): run \
                 from the repository's root, or set {DATA_ENV} to its data/ folder; a build \
                 with the `download` feature fetches it (the examples' --download)"
            ),
            Self::FashionMnist => format!(
                "install it with `apt-get install dataset-fashion-mnist` (into \
                 {SYSTEM_DIR}/{folder}), put its four IDX files (from \
                 https://github.com/zalandoresearch/fashion-mnist) into one of those folders, \
                 or fetch them with a build that has the `download` feature (the examples' \
                 --download)"
            ),
            Self::Cifar10 | Self::Cifar100 => format!(
                "download the binary version from https://www.cs.toronto.edu/~kriz/cifar.html \
                 and unpack it into ./data or ${DATA_ENV} (the archive creates {folder}/)"
            ),
        }
    }
}

impl fmt::Display for DatasetName {
    /// Writes the [`folder`](DatasetName::folder) name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.folder())
    }
}

impl FromStr for DatasetName {
    type Err = Error;

    /// Parses `mnist`, `fashion-mnist` (or `fashion_mnist`, `fashionmnist`), `cifar10` (or
    /// `cifar-10`), `cifar100` (or `cifar-100`), or a [`folder`](DatasetName::folder) name,
    /// ignoring case.
    fn from_str(s: &str) -> Result<Self> {
        let key: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_'))
            .flat_map(char::to_lowercase)
            .collect();
        match key.as_str() {
            "mnist" => Ok(Self::Mnist),
            "fashionmnist" => Ok(Self::FashionMnist),
            "cifar10" | "cifar10batchesbin" => Ok(Self::Cifar10),
            "cifar100" | "cifar100binary" => Ok(Self::Cifar100),
            _ => Err(Error::config(
                "DatasetName",
                "name",
                format!(
                    "unknown dataset `{s}`; expected mnist, fashion-mnist, cifar10 or cifar100"
                ),
            )),
        }
    }
}

/// Whether something (a file, or anything else that is not a dangling link) is at `path`.
fn present(path: &Path) -> bool {
    !matches!(probe(path), Ok(None))
}

/// The folders searched after an explicit one, in order; `fdfa_data` is `$FDFA_DATA`.
fn default_dirs(name: DatasetName, fdfa_data: Option<OsString>) -> Vec<PathBuf> {
    let folder = name.folder();
    let mut dirs = Vec::with_capacity(3);
    if let Some(root) = fdfa_data.filter(|r| !r.is_empty()) {
        dirs.push(PathBuf::from(root).join(folder));
    }
    dirs.push(Path::new("data").join(folder));
    dirs.push(Path::new(SYSTEM_DIR).join(folder));
    dirs
}

fn not_found(name: DatasetName, searched: &[PathBuf], hint: String) -> Error {
    Error::DatasetNotFound {
        dataset: name.folder().to_string(),
        searched: searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        hint,
    }
}

fn locate_with(
    name: DatasetName,
    data_dir: Option<&Path>,
    fdfa_data: Option<OsString>,
) -> Result<PathBuf> {
    if let Some(dir) = data_dir {
        if name.is_in(dir) {
            return Ok(dir.to_path_buf());
        }
        let nested = dir.join(name.folder());
        let hint = if name.is_in(&nested) {
            format!("did you mean {}?", nested.display())
        } else {
            name.hint()
        };
        return Err(not_found(name, &[dir.to_path_buf()], hint));
    }
    let dirs = default_dirs(name, fdfa_data);
    match dirs.iter().find(|d| name.is_in(d)) {
        Some(dir) => Ok(dir.clone()),
        None => Err(not_found(name, &dirs, name.hint())),
    }
}

/// The folder holding `name`'s files: `data_dir` when given, otherwise the first of
/// `$FDFA_DATA/<folder>`, `./data/<folder>` and `/usr/share/datasets/<folder>` that holds
/// them (see [`DatasetName::is_in`]).
///
/// # Errors
///
/// [`Error::DatasetNotFound`], listing every folder searched and how to obtain the files,
/// when `data_dir` is given and does not hold the files, or when no default folder does.
///
/// ```
/// use fdfa::{Error, data::{DatasetName, locate}};
/// use std::path::Path;
///
/// # fn main() -> fdfa::Result<()> {
/// # if !std::path::Path::new("data/mnist").exists() { return Ok(()); } // not packaged
/// let dir = locate(DatasetName::Mnist, Some(Path::new("data/mnist")))?;
/// assert_eq!(dir, Path::new("data/mnist"));
///
/// // An explicit folder that lacks the files is an error at once.
/// let err = locate(DatasetName::Mnist, Some(Path::new("data"))).unwrap_err();
/// assert!(matches!(err, Error::DatasetNotFound { .. }));
/// assert!(err.to_string().contains("did you mean data/mnist?"));
/// # Ok(())
/// # }
/// ```
pub fn locate(name: DatasetName, data_dir: Option<&Path>) -> Result<PathBuf> {
    locate_with(name, data_dir, std::env::var_os(DATA_ENV))
}

/// Locates `name` (see [`locate`]) and loads its `(train, test)` sets as raw [`Dataset`]s,
/// e.g. to take a [`Dataset::subset`] before wrapping them.
///
/// # Errors
///
/// Those of [`locate`], then those of the dataset's loader ([`load_mnist`],
/// [`load_fashion_mnist`](super::load_fashion_mnist), [`load_cifar10`], [`load_cifar100`]).
///
/// ```
/// use fdfa::data::{DatasetName, load_raw};
///
/// # fn main() -> fdfa::Result<()> {
/// # if !std::path::Path::new("data/mnist").exists() { return Ok(()); } // not packaged
/// let (train, _test) = load_raw(DatasetName::Mnist, Some(std::path::Path::new("data/mnist")))?;
/// let small = train.subset(0..100)?;
/// assert_eq!(small.len(), 100);
/// # Ok(())
/// # }
/// ```
pub fn load_raw(name: DatasetName, data_dir: Option<&Path>) -> Result<(Dataset, Dataset)> {
    let dir = locate(name, data_dir)?;
    match name {
        DatasetName::Mnist | DatasetName::FashionMnist => load_mnist(&dir),
        DatasetName::Cifar10 => load_cifar10(&dir),
        DatasetName::Cifar100 => load_cifar100(&dir),
    }
}

/// Locates and loads `name`, returning its `(train, test)` sources as the reference feeds
/// them to the network: CIFAR-100 through the AlexNet pipelines at
/// [`CIFAR100_SIZE`]` = 224` ([`Augmented::train`], [`Augmented::test`]), the others as they
/// are.
///
/// # Errors
///
/// Those of [`load_raw`].
///
/// ```
/// use fdfa::data::{DataSource, DatasetName, load};
///
/// # fn main() -> fdfa::Result<()> {
/// # if !std::path::Path::new("data/mnist").exists() { return Ok(()); } // not packaged
/// let (train, test) = load(DatasetName::Mnist, None)?; // found in ./data/mnist
/// assert_eq!(train.sample_shape(), [1, 28, 28]);
/// assert_eq!((train.len(), test.len(), test.classes()), (60_000, 10_000, 10));
/// # Ok(())
/// # }
/// ```
pub fn load(
    name: DatasetName,
    data_dir: Option<&Path>,
) -> Result<(Box<dyn DataSource>, Box<dyn DataSource>)> {
    let (train, test) = load_raw(name, data_dir)?;
    Ok(match name {
        DatasetName::Cifar100 => (
            Box::new(Augmented::train(train, CIFAR100_SIZE)?),
            Box::new(Augmented::test(test, CIFAR100_SIZE)?),
        ),
        _ => (Box::new(train), Box::new(test)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dirs_put_fdfa_data_first_and_skip_it_when_empty() {
        let dirs = default_dirs(DatasetName::Cifar10, Some("/x".into()));
        let expected = [
            "/x/cifar-10-batches-bin",
            "data/cifar-10-batches-bin",
            "/usr/share/datasets/cifar-10-batches-bin",
        ];
        assert_eq!(dirs, expected.map(PathBuf::from));
        assert_eq!(default_dirs(DatasetName::Mnist, Some("".into())).len(), 2);
        assert_eq!(default_dirs(DatasetName::Mnist, None).len(), 2);
    }

    #[test]
    fn names_parse_in_several_spellings() {
        for (s, name) in [
            ("MNIST", DatasetName::Mnist),
            ("fashion_mnist", DatasetName::FashionMnist),
            ("Fashion-MNIST", DatasetName::FashionMnist),
            ("cifar-10", DatasetName::Cifar10),
            ("cifar-10-batches-bin", DatasetName::Cifar10),
            ("CIFAR100", DatasetName::Cifar100),
        ] {
            assert_eq!(s.parse::<DatasetName>().unwrap(), name, "{s}");
        }
        assert!("imagenet".parse::<DatasetName>().is_err());
        for name in DatasetName::ALL {
            assert_eq!(name.folder().parse::<DatasetName>().unwrap(), name);
        }
    }
}
