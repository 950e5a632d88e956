//! The per-epoch CSV log, with the reference's columns.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::EpochRecord;
use crate::csv::open_appending;
use crate::error::{Error, Result};

/// The header the reference writes.
pub const HEADER: &str = "Epoch,Training Loss,Test Loss,Test Accuracy";

/// Appends one row per epoch to a CSV file (`Epoch,Training Loss,Test Loss,Test Accuracy`).
#[derive(Debug)]
pub struct CsvLog {
    path: PathBuf,
    file: File,
}

impl CsvLog {
    /// Opens `path` for appending, creating it (and its folder) with the header if needed.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be created or written.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Ok(Self {
            path: path.to_path_buf(),
            file: open_appending(path, HEADER)?,
        })
    }

    /// Rewrites `path` atomically with the header and `records`, then opens it for appending:
    /// a resumed run's log then holds exactly the epochs of its checkpoint, whatever a crash
    /// left after them.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be written.
    ///
    /// ```
    /// use fdfa::train::{CsvLog, EpochRecord};
    /// # fn main() -> fdfa::Result<()> {
    /// let path = std::env::temp_dir().join(format!("fdfa-doc-csv-{}.csv", std::process::id()));
    /// let r = EpochRecord { epoch: 1, train_loss: 0.5, test_loss: 0.25, test_accuracy: 90.0 };
    /// let mut log = CsvLog::rewrite(&path, &[r])?;
    /// log.append(&EpochRecord { epoch: 2, ..r })?;
    /// let text = std::fs::read_to_string(&path).unwrap();
    /// assert_eq!(text.lines().collect::<Vec<_>>()[1..], ["1,0.5,0.25,90", "2,0.5,0.25,90"]);
    /// # std::fs::remove_file(&path).ok();
    /// # Ok(())
    /// # }
    /// ```
    pub fn rewrite(path: impl AsRef<Path>, records: &[EpochRecord]) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        super::atomic::write_atomic(path, true, |out| {
            writeln!(out, "{HEADER}")?;
            records.iter().try_for_each(|r| write_row(out, r))
        })?;
        Self::open(path)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a row and flushes it.
    ///
    /// # Errors
    /// [`Error::Io`] when the write fails.
    pub fn append(&mut self, r: &EpochRecord) -> Result<()> {
        write_row(&mut self.file, r)
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

fn write_row(out: &mut dyn Write, r: &EpochRecord) -> std::io::Result<()> {
    writeln!(
        out,
        "{},{},{},{}",
        r.epoch, r.train_loss, r.test_loss, r.test_accuracy
    )
}
