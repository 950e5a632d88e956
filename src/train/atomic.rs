//! Atomic file replacement: write a temporary file, flush it to disk, rename it over the
//! target, flush the folder. A crash at any point leaves either the old file or the new one,
//! never a mix.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The suffix of temporary files; a file with it is a save that never completed.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The temporary file `path` is written to before the rename.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(TMP_SUFFIX);
    path.with_file_name(name)
}

/// Replaces `path` atomically with what `write` produces.
///
/// With `rename` false the temporary file is written and synced but left in place (the state
/// a crash between the write and the rename leaves; tests simulate it this way).
pub(crate) fn write_atomic(
    path: &Path,
    rename: bool,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<()> {
    let tmp = tmp_path(path);
    let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let written = (|| {
        let mut out = BufWriter::new(file);
        write(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        // A full disk must not stay full of partial files: the target is untouched, so the
        // temporary file is worthless.
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if !rename {
        return Ok(());
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Flushes a folder's entries (the renames in it) to disk.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(dir, e))
    }
    #[cfg(not(unix))]
    {
        // Other systems cannot open a folder as a file; their renames are durable enough.
        let _ = dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_or_leaves_it_alone() {
        let dir = std::env::temp_dir().join(format!("fdfa-atomic-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.txt");
        write_atomic(&path, true, |w| w.write_all(b"old")).unwrap();
        write_atomic(&path, false, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(fs::read(tmp_path(&path)).unwrap(), b"new");
        write_atomic(&path, true, |w| w.write_all(b"new")).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert!(!tmp_path(&path).exists());
        let err = write_atomic(&path, true, |w| {
            w.write_all(&[7; 1 << 16])?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert!(err.to_string().ends_with("f.txt.tmp: disk full"), "{err}");
        assert!(
            !tmp_path(&path).exists(),
            "a failed write leaves no temporary file"
        );
        assert_eq!(fs::read(&path).unwrap(), b"new");
        fs::remove_dir_all(&dir).unwrap();
    }
}
