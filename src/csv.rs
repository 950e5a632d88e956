//! Appending CSV logs, shared by the training log and the alignment log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

/// Opens a CSV file for appending, creating it (and its folder) with `header` when it is new
/// or empty.
pub(crate) fn open_appending(path: &Path, header: &str) -> Result<File> {
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
        writeln!(file, "{header}").map_err(|e| Error::io(path, e))?;
    }
    Ok(file)
}
