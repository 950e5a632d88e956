//! The alignment log: one CSV row per hidden block per measurement.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::LayerAlignment;
use crate::error::{Error, Result};

/// The alignment log's header. Missing values (no feedback matrices, no learned feedback)
/// are empty fields.
pub const ALIGNMENT_HEADER: &str = "epoch,batch,batches,layer,point,update_cosine,block_cosine,\
feedback_cosine,variance,relative_variance,feedback_variance,feedback_relative_variance";

/// One measurement of one hidden block during training.
#[derive(Clone, Debug, PartialEq)]
pub struct AlignmentRow {
    /// The epoch, from 1.
    pub epoch: usize,
    /// The batch within the epoch, from 1; measured before that batch's update.
    pub batch: usize,
    /// Batches in the epoch (so that `epoch - 1 + batch / batches` places the row in time).
    pub batches: usize,
    /// What was measured.
    pub alignment: LayerAlignment,
}

/// Where the alignment log of the training log `log` goes: beside it, with the extension
/// `alignment.csv` (`results/FDFA/run.csv` gives `results/FDFA/run.alignment.csv`).
///
/// ```
/// use std::path::Path;
/// use fdfa::diagnostics::alignment_log_path;
/// assert_eq!(
///     alignment_log_path(Path::new("results/FDFA/run.csv")),
///     Path::new("results/FDFA/run.alignment.csv")
/// );
/// ```
pub fn alignment_log_path(log: impl AsRef<Path>) -> PathBuf {
    log.as_ref().with_extension("alignment.csv")
}

/// Appends [`AlignmentRow`]s to a CSV file with the header [`ALIGNMENT_HEADER`].
#[derive(Debug)]
pub struct AlignmentLog {
    path: PathBuf,
    file: File,
}

fn optional(v: Option<f64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

impl AlignmentLog {
    /// Opens `path` for appending, creating it (and its folder) with the header if needed.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be created or written.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self {
            path: path.to_path_buf(),
            file: crate::csv::open_appending(path, ALIGNMENT_HEADER)?,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends rows and flushes them.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn append(&mut self, rows: &[AlignmentRow]) -> Result<()> {
        let mut text = String::new();
        for r in rows {
            let a = &r.alignment;
            text.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{},{},{}\n",
                r.epoch,
                r.batch,
                r.batches,
                a.layer,
                a.point,
                a.update_cosine,
                a.block_cosine,
                optional(a.feedback_cosine),
                a.variance,
                a.relative_variance,
                optional(a.feedback_variance),
                optional(a.feedback_relative_variance),
            ));
        }
        self.file
            .write_all(text.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}
