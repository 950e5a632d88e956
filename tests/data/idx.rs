//! IDX files (MNIST layout): raw and gzip, valid and hostile.

use std::fs;
use std::path::PathBuf;

use fdfa::data::{self, load_mnist, read_idx_images, read_idx_labels};
use fdfa::{DataErrorKind, Error};

use super::{TempDir, bad_magic, data_kind, gzip, idx_images, idx_labels, truncated};

#[test]
fn idx_is_read_raw_or_gzip_whatever_the_name() {
    let tmp = TempDir::new("idx-valid");
    let pixels: Vec<u8> = (0..2 * 3 * 4).collect();
    let images = idx_images(2, 3, 4, &pixels);
    let labels = idx_labels(2, &[9, 0]);
    let cases = [
        tmp.write("raw-images", &images),
        tmp.write("gz-images.gz", &gzip(&images)),
        // Detected by the magic bytes, not the name.
        tmp.write("gz-under-a-plain-name", &gzip(&images)),
        tmp.write("raw-under-a-gz-name.gz", &images),
    ];
    for path in &cases {
        let (p, n, rows, cols) = read_idx_images(path).unwrap();
        assert_eq!((n, rows, cols), (2, 3, 4), "{}", path.display());
        assert_eq!(p, pixels);
    }
    assert_eq!(read_idx_labels(&tmp.write("l", &labels)).unwrap(), [9, 0]);
    assert_eq!(
        read_idx_labels(&tmp.write("l.gz", &gzip(&labels))).unwrap(),
        [9, 0]
    );
    // Zero items is a valid, empty file.
    assert!(
        read_idx_labels(&tmp.write("none", &idx_labels(0, &[])))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn idx_truncated_files_are_errors() {
    let tmp = TempDir::new("idx-truncated");
    let short = idx_images(3, 2, 2, &[0; 10]);
    let path = tmp.write("short-images", &short);
    let kind = data_kind(read_idx_images(&path), &path);
    assert_eq!(kind, truncated(28, 26));

    let path = tmp.write("short-images.gz", &gzip(&short));
    let kind = data_kind(read_idx_images(&path), &path);
    assert_eq!(kind, truncated(28, 26));

    let path = tmp.write("half-header", &short[..10]);
    let kind = data_kind(read_idx_images(&path), &path);
    assert_eq!(kind, truncated(16, 10));

    let path = tmp.write("empty", &[]);
    let kind = data_kind(read_idx_labels(&path), &path);
    assert_eq!(kind, truncated(8, 0));

    let path = tmp.write("short-labels.gz", &gzip(&idx_labels(5, &[1, 2])));
    let kind = data_kind(read_idx_labels(&path), &path);
    assert_eq!(kind, truncated(13, 10));
}

#[test]
fn idx_wrong_magic_is_an_error() {
    let tmp = TempDir::new("idx-magic");
    let labels = idx_labels(2, &[1, 2]);
    let path = tmp.write("labels-not-images", &labels);
    let kind = data_kind(read_idx_images(&path), &path);
    assert_eq!(kind, bad_magic(0x803, 0x801));
    let path = tmp.write("labels-not-images.gz", &gzip(&labels));
    let kind = data_kind(read_idx_images(&path), &path);
    assert_eq!(kind, bad_magic(0x803, 0x801));

    let images = idx_images(1, 1, 1, &[7]);
    let path = tmp.write("images-not-labels", &images);
    let kind = data_kind(read_idx_labels(&path), &path);
    assert_eq!(kind, bad_magic(0x801, 0x803));
}

#[test]
fn idx_header_counts_must_match_the_size() {
    let tmp = TempDir::new("idx-size");
    // One byte more than announced.
    let long = idx_images(1, 2, 2, &[1, 2, 3, 4, 5]);
    for path in [tmp.write("long", &long), tmp.write("long.gz", &gzip(&long))] {
        let kind = data_kind(read_idx_images(&path), &path);
        assert!(
            matches!(kind, DataErrorKind::SizeMismatch { .. }),
            "{kind:?}"
        );
    }
    let long_labels = idx_labels(1, &[1, 2]);
    let path = tmp.write("long-labels", &long_labels);
    let kind = data_kind(read_idx_labels(&path), &path);
    assert!(
        matches!(kind, DataErrorKind::SizeMismatch { .. }),
        "{kind:?}"
    );
}

/// A header announcing 2^31 images of 28x28 (1.7 TB) in a file of a few bytes fails on the
/// header check: an allocation of that size would abort the test process.
#[test]
fn idx_lying_headers_fail_before_allocating() {
    let tmp = TempDir::new("idx-huge");
    let huge = idx_images(1 << 31, 28, 28, &[0; 1000]);
    let path = tmp.write("huge", &huge);
    let kind = data_kind(read_idx_images(&path), &path);
    assert_eq!(kind, truncated(16 + (1u64 << 31) * 784, 1016));
    // Gzip: more than a file of this length can decompress to.
    let path = tmp.write("huge.gz", &gzip(&huge));
    let kind = data_kind(read_idx_images(&path), &path);
    assert!(
        matches!(kind, DataErrorKind::SizeMismatch { .. }),
        "{kind:?}"
    );
    // Dimensions whose product overflows.
    let path = tmp.write("overflow", &idx_images(u32::MAX, u32::MAX, u32::MAX, &[]));
    let kind = data_kind(read_idx_images(&path), &path);
    assert!(
        matches!(kind, DataErrorKind::SizeMismatch { .. }),
        "{kind:?}"
    );
    let path = tmp.write("huge-labels", &idx_labels(u32::MAX, &[0; 100]));
    let kind = data_kind(read_idx_labels(&path), &path);
    assert!(matches!(kind, DataErrorKind::Truncated { .. }), "{kind:?}");
}

/// A gzip bomb whose header is honest about a large payload but whose content goes on past
/// it: the reader stops one byte after the announced size.
#[test]
fn idx_gzip_bomb_is_read_only_up_to_the_announced_size() {
    let tmp = TempDir::new("idx-bomb");
    let mut bomb = idx_labels(1000, &[]);
    bomb.resize(bomb.len() + 50_000_000, 0);
    let path = tmp.write("bomb.gz", &gzip(&bomb));
    let kind = data_kind(read_idx_labels(&path), &path);
    assert!(
        matches!(kind, DataErrorKind::SizeMismatch { .. }),
        "{kind:?}"
    );
}

#[test]
fn idx_corrupt_gzip_is_an_error() {
    let tmp = TempDir::new("idx-gzip");
    let images = idx_images(4, 8, 8, &(0..=255).collect::<Vec<u8>>());
    let good = gzip(&images);

    let mut flipped = good.clone();
    for b in &mut flipped[12..good.len() - 8] {
        *b ^= 0x5a;
    }
    let cut = &good[..good.len() / 2];
    let mut bad_crc = good.clone();
    let at = bad_crc.len() - 8;
    bad_crc[at] ^= 1;
    let garbage = [0x1f, 0x8b, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9];
    for (name, bytes) in [
        ("flipped.gz", &flipped[..]),
        ("cut.gz", cut),
        ("bad-crc.gz", &bad_crc[..]),
        ("garbage.gz", &garbage[..]),
    ] {
        let path = tmp.write(name, bytes);
        let kind = data_kind(read_idx_images(&path), &path);
        assert!(
            matches!(kind, DataErrorKind::CorruptGzip { .. }),
            "{name}: {kind:?}"
        );
    }
}

/// Writes an MNIST-layout folder `m` whose training set has `n_images` 2x2 images and
/// `labels`; the test set is one image.
fn mnist_dir(tmp: &TempDir, n_images: u32, labels: &[u8]) -> PathBuf {
    let pixels = vec![128; n_images as usize * 4];
    tmp.write(
        "m/train-images-idx3-ubyte.gz",
        &gzip(&idx_images(n_images, 2, 2, &pixels)),
    );
    tmp.write(
        "m/train-labels-idx1-ubyte",
        &idx_labels(labels.len() as u32, labels),
    );
    tmp.write(
        "m/t10k-images-idx3-ubyte",
        &idx_images(1, 2, 2, &[0, 1, 2, 3]),
    );
    tmp.write("m/t10k-labels-idx1-ubyte.gz", &gzip(&idx_labels(1, &[3])));
    tmp.0.join("m")
}

#[test]
fn mnist_folder_accepts_gz_and_raw_names() {
    let tmp = TempDir::new("mnist-ok");
    let dir = mnist_dir(&tmp, 3, &[1, 9, 0]);
    let (train, test) = load_mnist(&dir).unwrap();
    assert_eq!(train.labels(), [1, 9, 0]);
    assert_eq!(train.sample_shape(), [1, 2, 2]);
    assert_eq!(test.pixels(), [0, 1, 2, 3]);
    let (train, _) = data::load_fashion_mnist(&dir).unwrap();
    assert_eq!(train.len(), 3);
}

#[test]
fn mnist_label_count_must_match_image_count() {
    let tmp = TempDir::new("mnist-count");
    let dir = mnist_dir(&tmp, 3, &[1, 2]);
    let path = dir.join("train-labels-idx1-ubyte");
    let kind = data_kind(load_mnist(&dir), &path);
    let DataErrorKind::SizeMismatch { detail } = kind else {
        panic!("expected SizeMismatch, got {kind:?}");
    };
    assert!(detail.contains("train-images-idx3-ubyte.gz"), "{detail}");
}

#[test]
fn mnist_label_out_of_range_is_an_error() {
    let tmp = TempDir::new("mnist-label");
    let dir = mnist_dir(&tmp, 3, &[1, 10, 2]);
    let path = dir.join("train-labels-idx1-ubyte");
    let kind = data_kind(load_mnist(&dir), &path);
    assert_eq!(
        kind,
        DataErrorKind::LabelOutOfRange {
            label: 10,
            index: 1,
            classes: 10
        }
    );
}

#[test]
fn mnist_missing_file_is_an_io_error_naming_it() {
    let tmp = TempDir::new("mnist-missing");
    let dir = mnist_dir(&tmp, 1, &[1]);
    fs::remove_file(dir.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let err = load_mnist(&dir).unwrap_err();
    assert!(err.to_string().contains("t10k-labels-idx1-ubyte"), "{err}");
    assert!(
        matches!(&err, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}
