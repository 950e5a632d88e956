//! The crate's error type.
//!
//! Every fallible function returns [`Result`]. Variants carry structured data (the layer, the
//! setting, the file) so that a caller can react to them and a user reading the message knows
//! exactly what did not fit. There is deliberately no catch-all string variant.

use std::path::PathBuf;

/// Shorthand for `std::result::Result<T, fdfa::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor reached a layer (or a function) with a shape it cannot take.
    #[error("{layer}: expected input of shape {expected}, got {got:?}")]
    Shape {
        /// The layer or operation that refused the tensor.
        layer: String,
        /// A description of the shape it expected, e.g. `[N, 784]`.
        expected: String,
        /// The shape it received.
        got: Vec<usize>,
    },
    /// A configuration value is out of its legal range.
    #[error("{layer}: invalid `{field}`: {reason}")]
    InvalidConfig {
        /// The layer, rule or component being configured.
        layer: String,
        /// The offending field.
        field: &'static str,
        /// Why the value is not accepted.
        reason: String,
    },
    /// A class index (a target label) is not below the number of classes.
    #[error("{context}: label {label} of sample {index} is out of range: the model has {classes} classes (labels 0 to {})", classes.saturating_sub(1))]
    LabelOutOfRange {
        /// Where the label was found (`cross_entropy`, `evaluate`).
        context: String,
        /// The label.
        label: usize,
        /// The sample holding it, within its batch.
        index: usize,
        /// The number of classes.
        classes: usize,
    },
    /// A data source and a model disagree on the number of classes.
    #[error("the data has {data} classes but the model outputs {model} logits per sample")]
    ClassMismatch {
        /// Classes of the data source.
        data: usize,
        /// Logits per sample of the model.
        model: usize,
    },
    /// A backward pass was asked for before any training forward.
    #[error(
        "backward before forward: a backward reads the activations of a training forward; \
         call `forward` first (`infer` keeps none)"
    )]
    BackwardBeforeForward,
    /// A data file is malformed.
    #[error("{}: {kind}", path.display())]
    Data {
        /// The file that could not be read.
        path: PathBuf,
        /// What is wrong with it.
        kind: DataErrorKind,
    },
    /// An operating-system error while reading or writing a file.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dataset could not be found in any of the places searched.
    #[error("dataset `{dataset}` not found; looked in: {searched}. {hint}")]
    DatasetNotFound {
        /// The dataset's folder name, e.g. `mnist`.
        dataset: String,
        /// Every folder that was searched, in order, separated by `, `.
        searched: String,
        /// How to obtain the files.
        hint: String,
    },
    /// No mirror served a dataset file (feature `download`).
    #[error("could not download {file}: {tried}")]
    Download {
        /// The file, e.g. `train-images-idx3-ubyte.gz`.
        file: String,
        /// Each URL tried and why it failed.
        tried: String,
    },
    /// Training produced a non-finite number.
    #[error("non-finite value in {tensor} at epoch {epoch}, batch {batch}")]
    NonFinite {
        /// The tensor that holds the NaN or infinity (e.g. `loss`, `fc_hidden.0.weight.grad`).
        tensor: String,
        /// The epoch (1-based) in which it appeared.
        epoch: usize,
        /// The batch (from 1) within the epoch, as the progress lines count it.
        batch: usize,
    },
    /// Samples whose shape does not fit a model's input (see
    /// [`fits_input`](crate::data::fits_input)): found before anything is trained.
    #[error(
        "the data's samples are {data:?} but the model takes {model:?} (images of another size \
         with as many values do not fit; a flat sample does)"
    )]
    InputMismatch {
        /// The shape of one sample of the data.
        data: Vec<usize>,
        /// The model's input shape.
        model: Vec<usize>,
    },
    /// An optimizer step met a non-finite gradient or produced a non-finite value; the
    /// trainer reports it as [`Error::NonFinite`] with its position in the run.
    #[error("non-finite value in {tensor} after an optimizer step")]
    NonFiniteUpdate {
        /// The tensor: `<parameter>.grad` when the gradient is not finite, else the
        /// parameter.
        tensor: String,
    },
    /// Training across ranks failed: a rank disagrees with the others, the transport
    /// failed, or another rank stopped (see [`distributed`](crate::distributed)).
    #[error("rank {rank}: {reason}")]
    Distributed {
        /// The rank that reports it.
        rank: usize,
        /// What happened.
        reason: String,
    },
    /// A saved state does not match what is being asked of it.
    #[error("incompatible {setting}: saved `{saved}`, requested `{requested}`")]
    Incompatible {
        /// The setting that differs (e.g. `network`, `rule`, `dataset`, a tensor name).
        setting: String,
        /// The value in the saved state.
        saved: String,
        /// The value requested now.
        requested: String,
    },
    /// A checkpoint is malformed (a missing or misshapen tensor, unreadable metadata).
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file or folder.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// What is wrong with a data file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DataErrorKind {
    /// The file ends before the header or the payload it announces.
    #[error("truncated: expected {expected} bytes, found {found}")]
    Truncated {
        /// Bytes the header implies.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },
    /// The magic number is not the one of the expected format.
    #[error("bad magic number 0x{found:08x} (expected 0x{expected:08x})")]
    BadMagic {
        /// The magic number of the format.
        expected: u32,
        /// The one found in the file.
        found: u32,
    },
    /// The header's dimensions disagree with the file's size or with its companion file.
    #[error("header and size disagree: {detail}")]
    SizeMismatch {
        /// What disagrees with what.
        detail: String,
    },
    /// A label is not below the number of classes.
    #[error("label {label} at index {index} is out of range (classes: {classes})")]
    LabelOutOfRange {
        /// The label read.
        label: u32,
        /// The record holding it.
        index: usize,
        /// The number of classes of the dataset.
        classes: usize,
    },
    /// The gzip stream is corrupt.
    #[error("corrupt gzip stream: {detail}")]
    CorruptGzip {
        /// The decoder's message.
        detail: String,
    },
    /// The path names something other than a regular file (a folder, a FIFO, a device).
    #[error("is {found}, not a regular file")]
    NotRegular {
        /// What is there, e.g. `a FIFO (named pipe)`.
        found: String,
    },
    /// The file is well formed but holds nothing to train or test on.
    #[error("holds no {what}")]
    Empty {
        /// What it should hold, e.g. `images (the header's count is 0)`.
        what: String,
    },
    /// The decompressed content does not have the published checksum.
    #[error("checksum mismatch: expected {expected}, got {got}")]
    Checksum {
        /// The published SHA-256.
        expected: String,
        /// The SHA-256 of what was read.
        got: String,
    },
}

impl Error {
    /// Builds an [`Error::Shape`].
    pub(crate) fn shape(layer: &str, expected: impl Into<String>, got: &[usize]) -> Self {
        Self::Shape {
            layer: layer.to_string(),
            expected: expected.into(),
            got: got.to_vec(),
        }
    }

    /// Builds an [`Error::InvalidConfig`].
    pub(crate) fn config(layer: &str, field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidConfig {
            layer: layer.to_string(),
            field,
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::Data`].
    pub(crate) fn data(path: impl Into<PathBuf>, kind: DataErrorKind) -> Self {
        Self::Data {
            path: path.into(),
            kind,
        }
    }

    /// Builds an [`Error::Io`].
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
