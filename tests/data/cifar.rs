//! CIFAR-10 and CIFAR-100 binary files, and loading CIFAR-100 for AlexNet.

use fdfa::DataErrorKind;
use fdfa::data::{
    self, DatasetName, load_cifar10, load_cifar100, read_cifar10_batch, read_cifar100_batch,
};

use super::{TempDir, data_kind, truncated};

/// CIFAR-10 records: label byte, then 1024 red, 1024 green, 1024 blue bytes.
fn cifar10_records(labels: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (i, &label) in labels.iter().enumerate() {
        bytes.push(label);
        for plane in 0..3u8 {
            bytes.extend((0..1024).map(|p| (p as u8).wrapping_add(plane * 50 + i as u8)));
        }
    }
    bytes
}

/// CIFAR-100 records: coarse label, fine label, then the planes.
fn cifar100_records(labels: &[(u8, u8)]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for &(coarse, fine) in labels {
        bytes.extend([coarse, fine]);
        bytes.extend((0..3072).map(|p| (p / 1024) as u8 * 100));
    }
    bytes
}

#[test]
fn cifar10_binary_layout_is_read() {
    let tmp = TempDir::new("cifar10-ok");
    for b in 1..=5u8 {
        tmp.write(&format!("c/data_batch_{b}.bin"), &cifar10_records(&[b, 0]));
    }
    tmp.write("c/test_batch.bin", &cifar10_records(&[9]));
    let dir = tmp.0.join("c");
    let (train, test) = load_cifar10(&dir).unwrap();
    assert_eq!(train.labels(), [1, 0, 2, 0, 3, 0, 4, 0, 5, 0]);
    assert_eq!((test.labels(), test.classes()), (&[9][..], 10));
    assert_eq!(train.sample_shape(), [3, 32, 32]);
    let (first, _) = train.sample(1).unwrap();
    // Channel-major: red plane, green plane (+50), blue plane (+100), of record 1 (+1).
    assert_eq!(
        [first[0], first[1024], first[2048], first[1023]],
        [1, 51, 101, 0]
    );
    assert!(DatasetName::Cifar10.is_in(&dir));
}

#[test]
fn cifar100_uses_fine_labels() {
    let tmp = TempDir::new("cifar100-ok");
    let path = tmp.write("train.bin", &cifar100_records(&[(19, 99), (0, 42)]));
    tmp.write("test.bin", &cifar100_records(&[(3, 7)]));
    let batch = read_cifar100_batch(&path).unwrap();
    assert_eq!((batch.labels(), batch.classes()), (&[99, 42][..], 100));
    assert_eq!(batch.sample(0).unwrap().0[2048], 200);
    let (_, test) = load_cifar100(&tmp.0).unwrap();
    assert_eq!(test.labels(), [7]);
}

#[test]
fn cifar_truncated_files_are_errors() {
    let tmp = TempDir::new("cifar-truncated");
    let records = cifar10_records(&[1, 2]);
    let path = tmp.write("data_batch_1.bin", &records[..records.len() - 5]);
    let kind = data_kind(read_cifar10_batch(&path), &path);
    assert_eq!(kind, truncated(6146, 6141));

    let path = tmp.write("empty.bin", &[]);
    let kind = data_kind(read_cifar10_batch(&path), &path);
    assert_eq!(kind, truncated(3073, 0));

    // CIFAR-10 records are one byte short of CIFAR-100's.
    let path = tmp.write("train.bin", &records);
    let kind = data_kind(read_cifar100_batch(&path), &path);
    assert_eq!(kind, truncated(6148, 6146));

    // One broken file spoils the training set, and the error names it.
    for b in 1..=5 {
        tmp.write(&format!("d/data_batch_{b}.bin"), &records);
    }
    tmp.write("d/test_batch.bin", &records);
    let path = tmp.write("d/data_batch_4.bin", &records[..3000]);
    let kind = data_kind(load_cifar10(&tmp.0.join("d")), &path);
    assert!(matches!(kind, DataErrorKind::Truncated { .. }), "{kind:?}");
}

#[test]
fn cifar_bad_labels_name_file_and_index() {
    let tmp = TempDir::new("cifar-label");
    let path = tmp.write("data_batch_2.bin", &cifar10_records(&[3, 10, 1]));
    let kind = data_kind(read_cifar10_batch(&path), &path);
    assert_eq!(
        kind,
        DataErrorKind::LabelOutOfRange {
            label: 10,
            index: 1,
            classes: 10
        }
    );

    let path = tmp.write("test.bin", &cifar100_records(&[(1, 5), (2, 6), (3, 100)]));
    let err = read_cifar100_batch(&path);
    let message = err.as_ref().unwrap_err().to_string();
    assert!(message.contains("index 2"), "{message}");
    let kind = data_kind(err, &path);
    assert_eq!(
        kind,
        DataErrorKind::LabelOutOfRange {
            label: 100,
            index: 2,
            classes: 100
        }
    );
}

#[test]
fn load_wraps_cifar100_for_alexnet() {
    let tmp = TempDir::new("load");
    tmp.write(
        "cifar-100-binary/train.bin",
        &cifar100_records(&[(0, 1), (0, 2)]),
    );
    tmp.write("cifar-100-binary/test.bin", &cifar100_records(&[(0, 3)]));
    let (train, test) =
        data::load(DatasetName::Cifar100, Some(&tmp.0.join("cifar-100-binary"))).unwrap();
    assert_eq!(train.sample_shape(), [3, 224, 224]);
    assert_eq!((train.len(), test.len(), test.classes()), (2, 1, 100));
    let mut x = vec![0.0; 3 * 224 * 224];
    let mut t = [0];
    test.fill_batch(&[0], 0, &mut x, &mut t).unwrap();
    // Constant planes stay constant through the resize: 0, 100 and 200.
    let expected = [0u8, 100, 200].map(|p| (f32::from(p) / 255.0 - 0.5) / 0.5);
    for (plane, value) in x.chunks(224 * 224).zip(expected) {
        assert!(plane.iter().all(|&v| v == value));
    }
    assert_eq!(t, [3]);

    if let Some(dir) =
        crate::common::mnist_or_skip("load_wraps_cifar100_for_alexnet, its MNIST part")
    {
        let (train, _) = data::load(DatasetName::Mnist, Some(&dir)).unwrap();
        assert_eq!(train.sample_shape(), [1, 28, 28]);
    }
}
