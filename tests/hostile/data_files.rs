//! Dataset files: something other than a regular file in a file's place is named as such,
//! not reported as a missing dataset (item 7); an IDX file of 0 images is refused (item 8);
//! a CIFAR file a byte too long is too long, not truncated (item 10).

use std::fs;
use std::path::{Path, PathBuf};

use fdfa::data::{DatasetName, load_mnist, locate, read_cifar10_batch};
use fdfa::{DataErrorKind, Error};

use super::TempDir;

/// An IDX file of `n` images of `rows`x`cols`.
pub fn idx_images(n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 3];
    for v in [n, rows, cols] {
        bytes.extend(v.to_be_bytes());
    }
    bytes.extend((0..n * rows * cols).map(|i| (i * 7 % 256) as u8));
    bytes
}

/// An IDX file of `n` labels.
pub fn idx_labels(n: u32) -> Vec<u8> {
    let mut bytes = vec![0, 0, 8, 1];
    bytes.extend(n.to_be_bytes());
    bytes.extend((0..n).map(|i| (i % 10) as u8));
    bytes
}

/// A folder in MNIST's layout with `train` and `test` images of `rows`x`cols`.
pub fn mnist_like(dir: &Path, train: u32, test: u32, rows: u32, cols: u32) -> PathBuf {
    fs::create_dir_all(dir).unwrap();
    for (split, n) in [("train", train), ("t10k", test)] {
        fs::write(
            dir.join(format!("{split}-images-idx3-ubyte")),
            idx_images(n, rows, cols),
        )
        .unwrap();
        fs::write(
            dir.join(format!("{split}-labels-idx1-ubyte")),
            idx_labels(n),
        )
        .unwrap();
    }
    dir.to_path_buf()
}

#[cfg(unix)]
#[test]
fn a_fifo_a_folder_or_a_symlink_loop_in_place_of_a_data_file_is_named() {
    let tmp = TempDir::new("data-fifo");
    let dir = mnist_like(&tmp.path().join("mnist"), 8, 4, 28, 28);
    let file = dir.join("train-images-idx3-ubyte");

    fs::remove_file(&file).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    // Found, not "dataset mnist not found"; and reading must not block on the FIFO.
    assert_eq!(locate(DatasetName::Mnist, Some(&dir)).unwrap(), dir);
    let err = load_mnist(&dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: is a FIFO (named pipe), not a regular file",
            file.display()
        )
    );
    assert!(matches!(
        err,
        Error::Data {
            kind: DataErrorKind::NotRegular { .. },
            ..
        }
    ));

    fs::remove_file(&file).unwrap();
    fs::create_dir(&file).unwrap();
    assert_eq!(
        load_mnist(&dir).unwrap_err().to_string(),
        format!("{}: is a folder, not a regular file", file.display())
    );

    fs::remove_dir(&file).unwrap();
    std::os::unix::fs::symlink(&file, &file).unwrap();
    let err = load_mnist(&dir).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: Too many levels of symbolic links",
            file.display()
        )),
        "{err}"
    );
}

#[test]
fn an_idx_file_of_zero_images_is_refused() {
    let tmp = TempDir::new("data-empty");
    let dir = mnist_like(&tmp.path().join("mnist"), 0, 4, 28, 28);
    let err = load_mnist(&dir).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: holds no images (the header's count is 0)",
            dir.join("train-images-idx3-ubyte").display()
        )
    );
}

#[test]
fn a_cifar_file_one_byte_too_long_is_too_long() {
    let tmp = TempDir::new("cifar-long");
    let path = tmp.path().join("data_batch_1.bin");
    let mut bytes = vec![3u8];
    bytes.extend(vec![9u8; 3072]);
    bytes.push(0);
    fs::write(&path, &bytes).unwrap();
    let err = read_cifar10_batch(&path).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: header and size disagree: too long: 3074 bytes, 1 more than 1 whole record(s) \
             of 3073 bytes",
            path.display()
        )
    );
}
