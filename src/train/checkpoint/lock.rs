//! An exclusive lock on a checkpoint folder, so that two processes never train into (or
//! resume) the same run at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use super::tensor_file::bad;
use crate::error::{Error, Result};

/// The file of a checkpoint folder whose lock a process holds while it uses the folder.
pub const LOCK_FILE: &str = "lock";

/// An exclusive lock on a checkpoint folder, held until dropped (or until the process ends,
/// however it ends: the operating system releases it).
///
/// ```
/// use fdfa::train::checkpoint::CheckpointLock;
/// # fn main() -> fdfa::Result<()> {
/// let dir = std::env::temp_dir().join(format!("fdfa-doc-lock-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let held = CheckpointLock::acquire(&dir)?;
/// let err = CheckpointLock::acquire(&dir).unwrap_err();
/// assert!(err.to_string().contains("in use by another run"));
/// drop(held);
/// assert!(CheckpointLock::acquire(&dir).is_ok());
/// # std::fs::remove_dir_all(&dir).ok();
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct CheckpointLock {
    dir: PathBuf,
    _file: File,
}

impl CheckpointLock {
    /// Locks the existing checkpoint folder `dir` (creating its [`LOCK_FILE`] if needed),
    /// without waiting.
    ///
    /// # Errors
    /// [`Error::Checkpoint`] when another process (or another lock in this one) holds it;
    /// [`Error::Io`] when the lock file cannot be opened or locked.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(Self {
                dir: dir.to_path_buf(),
                _file: file,
            }),
            Err(TryLockError::WouldBlock) => Err(bad(
                dir,
                format!(
                    "in use by another run (a process holds {}); wait for it to finish or \
                     stop it",
                    path.display()
                ),
            )),
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// The folder locked.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
