//! Where a run's files go: a fresh run reserves a name of its own, a resumed run writes its
//! log next to its checkpoint folder.
//!
//! A fresh run's files are `<log-dir>/<mode>/<timestamp>-<pid>.csv` and the checkpoint
//! folder `<timestamp>-<pid>.ckpt` beside it. Both are created exclusively (`create_new`,
//! `create_dir`), so two runs started in the same second, in parallel or one after the
//! other, never share or overwrite a file: the second takes the next free suffix.

use std::fs::{self, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use fdfa::Error;

/// Tries before giving up on finding a free name (each taken name is a file that exists).
const ATTEMPTS: u32 = 10_000;

/// The files of a fresh run, created empty: the CSV log and, unless `dry_run`, the
/// checkpoint folder.
pub fn reserve(
    folder: &Path,
    stamp: &str,
    dry_run: bool,
) -> fdfa::Result<(PathBuf, Option<PathBuf>)> {
    fs::create_dir_all(folder).map_err(|e| io(folder, e))?;
    let pid = std::process::id();
    for attempt in 0..ATTEMPTS {
        let name = match attempt {
            0 => format!("{stamp}-{pid}"),
            n => format!("{stamp}-{pid}-{n}"),
        };
        let csv = folder.join(format!("{name}.csv"));
        match OpenOptions::new().write(true).create_new(true).open(&csv) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&csv, e)),
        }
        if dry_run {
            return Ok((csv, None));
        }
        let ckpt = folder.join(format!("{name}.ckpt"));
        match fs::create_dir(&ckpt) {
            Ok(()) => return Ok((csv, Some(ckpt))),
            Err(e) => {
                let _ = fs::remove_file(&csv);
                if e.kind() != ErrorKind::AlreadyExists {
                    return Err(io(&ckpt, e));
                }
            }
        }
    }
    Err(io(
        folder,
        std::io::Error::new(
            ErrorKind::AlreadyExists,
            format!("{ATTEMPTS} names starting with {stamp}-{pid} are taken"),
        ),
    ))
}

/// The CSV log of the run checkpointed in `ckpt`: named after the folder (without its
/// `.ckpt`), in `log_dir/<mode>` when `--log-dir` was given on this command line, else next
/// to the folder, wherever it was moved. Nothing the checkpoint records is used.
pub fn resumed_log(ckpt: &Path, log_dir: Option<&Path>, mode: &str) -> fdfa::Result<PathBuf> {
    let named = match ckpt.file_name() {
        Some(_) => ckpt.to_path_buf(),
        // `.` or `..`: name the log after the folder's real name.
        None => fs::canonicalize(ckpt).map_err(|e| io(ckpt, e))?,
    };
    let stem = named.file_stem().ok_or_else(|| {
        io(
            ckpt,
            std::io::Error::new(ErrorKind::InvalidInput, "a checkpoint folder needs a name"),
        )
    })?;
    let mut file = stem.to_os_string();
    file.push(".csv");
    Ok(match log_dir {
        Some(dir) => dir.join(mode).join(file),
        None => named.with_file_name(file),
    })
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
