//! Where datasets are looked for, and what is said when they are not found.

use std::fs;
use std::path::Path;

use fdfa::Error;
use fdfa::data::{DATA_ENV, DatasetName, locate};

use super::TempDir;

fn touch_idx_folder(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for f in [
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte.gz",
    ] {
        fs::write(dir.join(f), []).unwrap();
    }
}

fn not_found(err: Error) -> (String, String, String) {
    match err {
        Error::DatasetNotFound {
            dataset,
            searched,
            hint,
        } => (dataset, searched, hint),
        other => panic!("expected DatasetNotFound, got {other:?}"),
    }
}

/// The only test that writes the environment (`FDFA_DATA`); it restores it at the end.
#[test]
fn locate_searches_in_order_and_lists_every_folder() {
    let original = std::env::var_os(DATA_ENV);
    let tmp = TempDir::new("locate");
    let with = tmp.0.join("with");
    let without = tmp.0.join("without");
    touch_idx_folder(&with.join("mnist"));
    fs::create_dir_all(&without).unwrap();
    let set = |value: &Path| {
        // SAFETY: no other test in this binary writes the environment, and Rust's own reads
        // (`std::env::var_os`) take the same lock as this write.
        unsafe { std::env::set_var(DATA_ENV, value) };
    };

    // $FDFA_DATA/<folder> comes before ./data/<folder> (which holds MNIST).
    set(&with);
    assert_eq!(
        locate(DatasetName::Mnist, None).unwrap(),
        with.join("mnist")
    );
    // The rest of this paragraph needs ./data/mnist, which the published package leaves out.
    if crate::common::mnist_or_skip("locate_searches_in_order_and_lists_every_folder, ./data")
        .is_some()
    {
        // An explicit folder comes first of all.
        let explicit = Path::new("data/mnist");
        assert_eq!(
            locate(DatasetName::Mnist, Some(explicit)).unwrap(),
            explicit
        );
        // Without the dataset under $FDFA_DATA, ./data/mnist is next.
        set(&without);
        assert_eq!(
            locate(DatasetName::Mnist, None).unwrap(),
            Path::new("data/mnist")
        );
        set(Path::new(""));
        assert_eq!(
            locate(DatasetName::Mnist, None).unwrap(),
            Path::new("data/mnist")
        );
    }

    // Not found anywhere: every folder searched is listed, in order, with a hint.
    set(&without);
    for (name, hint) in [
        (
            DatasetName::Cifar10,
            "https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
        (
            DatasetName::Cifar100,
            "https://www.cs.toronto.edu/~kriz/cifar.html",
        ),
        (
            DatasetName::FashionMnist,
            "apt-get install dataset-fashion-mnist",
        ),
    ] {
        let folder = name.folder();
        let defaults = [
            Path::new("data").join(folder),
            Path::new("/usr/share/datasets").join(folder),
        ];
        if defaults.iter().any(|d| name.is_in(d)) {
            continue; // installed on this machine
        }
        let err = locate(name, None).unwrap_err();
        let message = err.to_string();
        let (dataset, searched, h) = not_found(err);
        assert_eq!(dataset, folder);
        let expected = [
            without.join(folder),
            defaults[0].clone(),
            defaults[1].clone(),
        ]
        .map(|p| p.display().to_string())
        .join(", ");
        assert_eq!(searched, expected);
        assert!(h.contains(hint), "{h}");
        assert!(
            message.contains(&expected) && message.contains(hint),
            "{message}"
        );
    }

    // An explicit folder without the files is an error at once, even though others have them.
    set(&with);
    let (dataset, searched, hint) =
        not_found(locate(DatasetName::Mnist, Some(&without)).unwrap_err());
    assert_eq!(
        (dataset.as_str(), searched),
        ("mnist", without.display().to_string())
    );
    assert!(hint.contains("data/mnist"), "{hint}");
    // Pointing at the parent of the dataset's folder gets a suggestion.
    let (_, _, hint) = not_found(locate(DatasetName::Mnist, Some(&with)).unwrap_err());
    assert!(
        hint.contains(&with.join("mnist").display().to_string()),
        "{hint}"
    );

    match original {
        Some(value) => set(Path::new(&value)),
        // SAFETY: as above.
        None => unsafe { std::env::remove_var(DATA_ENV) },
    }
}
