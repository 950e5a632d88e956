//! The per-epoch CSV log, with the reference's columns.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::EpochRecord;
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
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let fresh = std::fs::metadata(path)
            .map(|m| m.len() == 0)
            .unwrap_or(true);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        if fresh {
            writeln!(file, "{HEADER}").map_err(|e| Error::io(path, e))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
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
        writeln!(
            self.file,
            "{},{},{},{}",
            r.epoch, r.train_loss, r.test_loss, r.test_accuracy
        )
        .and_then(|_| self.file.flush())
        .map_err(|e| Error::io(&self.path, e))
    }
}
