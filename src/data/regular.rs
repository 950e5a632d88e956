//! Opening files that must be regular files: a FIFO would block the reader forever, a folder
//! or a device is never what the user meant, and a symbolic link loop deserves to be named
//! as such rather than reported as a missing file.

use std::fs::{File, Metadata};
use std::io;
use std::path::Path;

/// Why a path cannot be read as a regular file.
#[derive(Debug)]
pub(crate) enum NotRegular {
    /// The operating system refused (missing, no permission, a symbolic link loop, ...).
    Io(io::Error),
    /// The path names something else: `a folder`, `a FIFO (named pipe)`, ...
    Kind(&'static str),
}

/// What a path's metadata says it is, in words, for anything but a regular file.
pub(crate) fn kind_of(meta: &Metadata) -> Option<&'static str> {
    let ft = meta.file_type();
    if ft.is_file() {
        return None;
    }
    if ft.is_dir() {
        return Some("a folder");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if ft.is_fifo() {
            return Some("a FIFO (named pipe)");
        }
        if ft.is_socket() {
            return Some("a socket");
        }
        if ft.is_block_device() || ft.is_char_device() {
            return Some("a device");
        }
    }
    Some("something other than a file")
}

/// Opens `path` for reading when it is a regular file (following symbolic links), and
/// returns it with its length. The type is checked before opening, so that a FIFO is
/// refused instead of blocking, and again on the opened file.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), NotRegular> {
    let meta = std::fs::metadata(path).map_err(NotRegular::Io)?;
    if let Some(kind) = kind_of(&meta) {
        return Err(NotRegular::Kind(kind));
    }
    let file = File::open(path).map_err(NotRegular::Io)?;
    let meta = file.metadata().map_err(NotRegular::Io)?;
    if let Some(kind) = kind_of(&meta) {
        return Err(NotRegular::Kind(kind));
    }
    Ok((file, meta.len()))
}

/// What is at `path`: `Ok(None)` for nothing, `Ok(Some(()))` for a regular file (following
/// symbolic links), an error for anything else that is there.
pub(crate) fn probe(path: &Path) -> Result<Option<()>, NotRegular> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(NotRegular::Io(e)),
        Ok(_) => {}
    }
    // Something is there; follow it (a dangling link is reported as missing).
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NotRegular::Io(e)),
        Ok(meta) => match kind_of(&meta) {
            None => Ok(Some(())),
            Some(kind) => Err(NotRegular::Kind(kind)),
        },
    }
}

/// [`open_regular`] for a data file, with the crate's errors.
pub(crate) fn open_data(path: &Path) -> crate::Result<(File, u64)> {
    open_regular(path).map_err(|e| data_error(path, e))
}

/// A [`NotRegular`] as the error of a data file.
pub(crate) fn data_error(path: &Path, e: NotRegular) -> crate::Error {
    match e {
        NotRegular::Io(e) => crate::Error::io(path, e),
        NotRegular::Kind(kind) => crate::Error::data(
            path,
            crate::error::DataErrorKind::NotRegular {
                found: kind.to_string(),
            },
        ),
    }
}
