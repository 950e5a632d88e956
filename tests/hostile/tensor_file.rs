//! The checkpoint's tensor file: read header first, every offset checked against the file's
//! length and the tensors expected, nothing but a regular file accepted (items 7, 8, 10).

use std::fs::{self, OpenOptions};
use std::path::Path;

use fdfa::Error;
use fdfa::train::checkpoint::{load_model, load_trainer};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{TempDir, saved, trainer};

/// The message of loading the checkpoint `dir` into an FC-`layers` trainer, which must be
/// left as it was.
fn refusal(dir: &Path, layers: usize) -> Error {
    let mut t = trainer(layers);
    let before = fdfa_state(&mut t);
    let err = load_trainer(dir, &mut t).unwrap_err();
    assert_eq!(
        before,
        fdfa_state(&mut t),
        "a refused load changed the trainer"
    );
    err
}

/// Every parameter value of a trainer, to tell whether a load changed it.
fn fdfa_state(t: &mut fdfa::train::Trainer) -> Vec<f32> {
    let mut all = Vec::new();
    t.model().visit_state(&mut |_, s| {
        if let fdfa::layers::State::Param(p) = s {
            all.extend_from_slice(p.value().data());
        }
    });
    all
}

/// `bytes` with the first value of tensor `name` set to `value`.
pub fn with_value(bytes: &[u8], name: &str, value: f32) -> Vec<u8> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let e = owned.iter_mut().find(|e| e.0 == name).unwrap();
    e.3[..4].copy_from_slice(&value.to_le_bytes());
    let views = owned
        .iter()
        .map(|(n, d, s, data)| (n.as_str(), TensorView::new(*d, s.clone(), data).unwrap()));
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn a_sparse_64_gb_tensor_file_is_refused_from_its_header_without_reading_it() {
    let tmp = TempDir::new("sparse");
    let dir = tmp.path().join("ckpt");
    let tensors = saved(&dir, 1);
    let len = fs::metadata(&tensors).unwrap().len();
    let file = OpenOptions::new().write(true).open(&tensors).unwrap();
    file.set_len(64 << 30).unwrap();
    drop(file);
    let err = refusal(&dir, 1);
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint {}: too long: the tensors' data ends at byte {len}, but the file holds \
             68719476736 bytes",
            tensors.display()
        )
    );
}

#[test]
fn bytes_appended_to_the_tensor_file_are_too_long_not_truncated() {
    let tmp = TempDir::new("appended");
    let dir = tmp.path().join("ckpt");
    let tensors = saved(&dir, 1);
    let mut bytes = fs::read(&tensors).unwrap();
    let len = bytes.len();
    bytes.extend([0u8; 100]);
    fs::write(&tensors, &bytes).unwrap();
    let expected = format!(
        "checkpoint {}: too long: the tensors' data ends at byte {len}, but the file holds {} \
         bytes",
        tensors.display(),
        len + 100
    );
    assert_eq!(refusal(&dir, 1).to_string(), expected);
    let mut model = fdfa::model::fc(&[1, 28, 28], 1, 16, 10, &mut fdfa::init::rng(1)).unwrap();
    assert_eq!(
        load_model(&tensors, &mut model).unwrap_err().to_string(),
        expected
    );
}

#[cfg(unix)]
#[test]
fn a_fifo_a_folder_or_a_symlink_loop_in_place_of_a_checkpoint_file_is_named() {
    let tmp = TempDir::new("fifo");
    let dir = tmp.path().join("ckpt");
    let tensors = saved(&dir, 1);

    fs::remove_file(&tensors).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(&tensors)
        .status()
        .unwrap();
    assert!(status.success());
    // Opening a FIFO for reading would block until a writer comes: this must not hang.
    assert_eq!(
        refusal(&dir, 1).to_string(),
        format!(
            "checkpoint {}: is a FIFO (named pipe), not a regular file",
            tensors.display()
        )
    );

    fs::remove_file(&tensors).unwrap();
    fs::create_dir(&tensors).unwrap();
    assert_eq!(
        refusal(&dir, 1).to_string(),
        format!(
            "checkpoint {}: is a folder, not a regular file",
            tensors.display()
        )
    );

    fs::remove_dir(&tensors).unwrap();
    std::os::unix::fs::symlink(&tensors, &tensors).unwrap();
    let err = refusal(&dir, 1);
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "{}: Too many levels of symbolic links",
            tensors.display()
        )),
        "{err}"
    );

    let state = dir.join("state.json");
    fs::remove_file(&state).unwrap();
    fs::create_dir(&state).unwrap();
    assert_eq!(
        refusal(&dir, 1).to_string(),
        format!(
            "checkpoint {}: is a folder, not a regular file",
            state.display()
        )
    );
}

#[test]
fn an_fc2_tensor_file_under_an_fc1_state_is_refused_for_its_extra_tensors() {
    let tmp = TempDir::new("extra");
    let one = saved(&tmp.path().join("one"), 1);
    let two = saved(&tmp.path().join("two"), 2);
    fs::copy(&two, &one).unwrap();
    let message = refusal(&tmp.path().join("one"), 1).to_string();
    let prefix = format!("checkpoint {}: holds tensor `", one.display());
    assert!(message.starts_with(&prefix), "{message}");
    assert!(
        message.ends_with("`, which is not part of this checkpoint's network, rule or optimizers"),
        "{message}"
    );
    assert!(
        message.contains(".1."),
        "an FC-2 tensor is named: {message}"
    );
}

#[test]
fn negative_second_moments_and_variances_are_refused() {
    let tmp = TempDir::new("negative");
    let dir = tmp.path().join("ckpt");
    let tensors = saved(&dir, 1);
    let bytes = fs::read(&tensors).unwrap();
    for name in [
        "optim.forward.fc_hidden.0.weight.exp_avg_sq",
        "bn_hidden.0.running_var",
    ] {
        fs::write(&tensors, with_value(&bytes, name, -1.0)).unwrap();
        assert_eq!(
            refusal(&dir, 1).to_string(),
            format!(
                "checkpoint {}: tensor `{name}` holds a negative value (-1) at index 0; a \
                 variance or a second moment cannot be negative",
                tensors.display()
            )
        );
    }
    // A model alone refuses a negative running variance too.
    let path = tmp.path().join("model.safetensors");
    fs::write(&path, with_value(&bytes, "bn_hidden.0.running_var", -0.5)).unwrap();
    let mut model = fdfa::model::fc(&[1, 28, 28], 1, 16, 10, &mut fdfa::init::rng(1)).unwrap();
    let err = load_model(&path, &mut model).unwrap_err();
    assert!(
        err.to_string()
            .contains("tensor `bn_hidden.0.running_var` holds a negative value (-0.5)"),
        "{err}"
    );
}
