//! Malformed checkpoints: every defect is a clear error that names the file and the tensor,
//! and the trainer (or model) is left as it was.

use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use fdfa::Error;
use fdfa::rules::RuleKind;
use fdfa::train::checkpoint::{RunInfo, load_model, load_trainer, save_model, save_trainer};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

use super::{Setup, TempDir, assert_same, mnist, snapshot};

/// A tensor of a safetensors file, owned.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn entries(bytes: &[u8]) -> Vec<Entry> {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let mut all: Vec<Entry> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| Entry {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    all
}

fn serialize(entries: &[Entry]) -> Vec<u8> {
    let views = entries.iter().map(|e| {
        let view = TensorView::new(e.dtype, e.shape.clone(), &e.data).unwrap();
        (e.name.as_str(), view)
    });
    safetensors::serialize(views, None).unwrap()
}

/// `bytes` with tensor `name` changed by `edit`.
fn edited(bytes: &[u8], name: &str, edit: impl FnOnce(&mut Entry)) -> Vec<u8> {
    let mut all = entries(bytes);
    let e = all.iter_mut().find(|e| e.name == name).unwrap();
    edit(e);
    serialize(&all)
}

fn without(bytes: &[u8], name: &str) -> Vec<u8> {
    let mut all = entries(bytes);
    all.retain(|e| e.name != name);
    serialize(&all)
}

/// A checkpoint of FDFA after two batches (so that the optimizers hold moments).
struct Saved {
    _tmp: TempDir,
    dir: PathBuf,
    tensors: PathBuf,
    bytes: Vec<u8>,
    state: String,
}

fn saved(name: &str) -> Saved {
    let tmp = TempDir::new(name);
    let dir = tmp.path().join("ckpt");
    let mut t = Setup::new(RuleKind::Fdfa).trainer();
    let (train, _) = mnist();
    t.train_epoch(train, &mut |ev| match ev.batch {
        2 => ControlFlow::Break(()),
        _ => ControlFlow::Continue(()),
    })
    .unwrap();
    save_trainer(&dir, &mut t, &RunInfo::default()).unwrap();
    let tensors = dir.join("model-000001.safetensors");
    let bytes = fs::read(&tensors).unwrap();
    let state = fs::read_to_string(dir.join("state.json")).unwrap();
    Saved {
        _tmp: tmp,
        dir,
        tensors,
        bytes,
        state,
    }
}

/// The message of the [`Error::Checkpoint`] that loading `dir` gives; the trainer must be
/// unchanged.
fn checkpoint_error(dir: &Path) -> String {
    let mut t = Setup::new(RuleKind::Fdfa).trainer();
    let before = snapshot(&mut t);
    let err = load_trainer(dir, &mut t).unwrap_err();
    assert_same(&before, &snapshot(&mut t));
    assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
    err.to_string()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn defective_tensors_are_named() {
    let Some(_) = crate::common::mnist_or_skip("defective_tensors_are_named") else {
        return;
    };
    let s = saved("tensors");
    let nan_at_3 = |e: &mut Entry| e.data[12..16].copy_from_slice(&f32::NAN.to_le_bytes());
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            without(&s.bytes, "fc_out.bias"),
            "tensor `fc_out.bias` is missing".into(),
        ),
        (
            edited(&s.bytes, "fc_out.bias", |e| {
                e.shape = vec![5];
                e.data.truncate(20);
            }),
            "tensor `fc_out.bias` has shape [5], expected [10]".into(),
        ),
        (
            edited(&s.bytes, "fc_out.bias", |e| {
                e.dtype = Dtype::F64;
                e.shape = vec![5];
            }),
            "tensor `fc_out.bias` is F64, expected F32".into(),
        ),
        (
            edited(&s.bytes, "fc_hidden.0.weight", nan_at_3),
            "tensor `fc_hidden.0.weight` holds a non-finite value (NaN) at index 3".into(),
        ),
        (
            edited(&s.bytes, "optim.forward.fc_out.bias.exp_avg", |e| {
                e.data[..4].copy_from_slice(&f32_bytes(&[f32::INFINITY]));
            }),
            "tensor `optim.forward.fc_out.bias.exp_avg` holds a non-finite value (inf) at index 0"
                .into(),
        ),
        (
            edited(&s.bytes, "bn_hidden.1.num_batches_tracked", |e| {
                e.data = (-1i64).to_le_bytes().to_vec();
            }),
            "tensor `bn_hidden.1.num_batches_tracked` holds -1, expected a count of zero or more"
                .into(),
        ),
        (
            without(&s.bytes, "fc_dfa.0.feedbacks"),
            "tensor `fc_dfa.0.feedbacks` is missing".into(),
        ),
        (
            without(&s.bytes, "optim.feedback.fc_dfa.1.feedbacks.exp_avg_sq"),
            "tensor `optim.feedback.fc_dfa.1.feedbacks.exp_avg_sq` is missing".into(),
        ),
    ];
    for (bytes, reason) in cases {
        fs::write(&s.tensors, &bytes).unwrap();
        let expected = format!("checkpoint {}: {reason}", s.tensors.display());
        assert_eq!(checkpoint_error(&s.dir), expected);
    }
}

#[test]
fn truncated_and_garbled_tensor_files_are_errors() {
    let Some(_) = crate::common::mnist_or_skip("truncated_and_garbled_tensor_files_are_errors")
    else {
        return;
    };
    let s = saved("files");
    let len = s.bytes.len();
    let header = u64::from_le_bytes(s.bytes[..8].try_into().unwrap());
    let mut not_json = 16u64.to_le_bytes().to_vec();
    not_json.extend(b"{not json at all");
    let cases: Vec<(Vec<u8>, String)> = vec![
        (
            s.bytes[..len / 2].to_vec(),
            format!(
                "truncated: the tensors' data does not end with the file ({} bytes)",
                len / 2
            ),
        ),
        (
            s.bytes[..100].to_vec(),
            format!("truncated: the header announces {header} bytes, but 92 follow"),
        ),
        (
            s.bytes[..5].to_vec(),
            "truncated: 5 bytes, fewer than the 8 of the header's length".into(),
        ),
        (
            not_json,
            "not a valid safetensors file: invalid JSON in header: key must be a string at \
             line 1 column 2"
                .into(),
        ),
    ];
    for (bytes, reason) in cases {
        fs::write(&s.tensors, &bytes).unwrap();
        let expected = format!("checkpoint {}: {reason}", s.tensors.display());
        assert_eq!(checkpoint_error(&s.dir), expected);
    }
    fs::remove_file(&s.tensors).unwrap();
    let mut t = Setup::new(RuleKind::Fdfa).trainer();
    let err = load_trainer(&s.dir, &mut t).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn garbled_state_files_are_errors() {
    let Some(_) = crate::common::mnist_or_skip("garbled_state_files_are_errors") else {
        return;
    };
    let s = saved("state");
    let state_path = s.dir.join("state.json");
    let mut json: serde_json::Value = serde_json::from_str(&s.state).unwrap();
    json["tensors"] = "../elsewhere.safetensors".into();
    let escape = json.to_string();
    let mut json: serde_json::Value = serde_json::from_str(&s.state).unwrap();
    json["progress"]["epoch"] = 5.into();
    let position = json.to_string();
    let mut json: serde_json::Value = serde_json::from_str(&s.state).unwrap();
    json["version"] = 2.into();
    let version = json.to_string();
    let mut json: serde_json::Value = serde_json::from_str(&s.state).unwrap();
    json["forward_opt"]["steps"] = 0.into();
    let steps = json.to_string();
    let mut json: serde_json::Value = serde_json::from_str(&s.state).unwrap();
    json["feedback_opt"]["config"]["lr"] = 1e30.into();
    let lr = json.to_string();
    let cases = [
        (
            "{not json".to_string(),
            "invalid JSON: key must be a string at line 1 column 2",
        ),
        (
            s.state[..s.state.len() / 2].to_string(),
            "invalid JSON: EOF while parsing",
        ),
        (
            escape,
            "`tensors` must name a `.safetensors` file in the same folder, not \
             `../elsewhere.safetensors`",
        ),
        (position, "0 epoch records for 5 completed epochs"),
        (
            version,
            "format `fdfa-checkpoint` version 2, expected `fdfa-checkpoint` version 1",
        ),
        (
            steps,
            "the forward optimizer's 0 steps do not fit its moments",
        ),
        (
            lr,
            "the feedback learning rate 1000000000000000000000000000000 is not b_lr 0.001",
        ),
    ];
    for (text, reason) in cases {
        fs::write(&state_path, &text).unwrap();
        let expected = format!("checkpoint {}: {reason}", state_path.display());
        let message = checkpoint_error(&s.dir);
        assert!(message.starts_with(&expected), "{message}\nvs {expected}");
    }
}

#[test]
fn models_load_alone_from_trainer_checkpoints_and_refuse_bad_tensors() {
    let Some(_) = crate::common::mnist_or_skip(
        "models_load_alone_from_trainer_checkpoints_and_refuse_bad_tensors",
    ) else {
        return;
    };
    let s = saved("model");
    let fresh = || {
        let mut rng = fdfa::init::rng(99);
        fdfa::model::fc(&[1, 28, 28], 2, 32, 10, &mut rng).unwrap()
    };
    // The trainer's tensor file holds the model (and more, which is ignored).
    let mut model = fresh();
    load_model(&s.tensors, &mut model).unwrap();
    let path = s.dir.join("alone.safetensors");
    save_model(&path, &model).unwrap();
    let names: Vec<String> = entries(&fs::read(&path).unwrap())
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.starts_with("optim.") && !n.contains("feedbacks"))
    );
    assert!(names.contains(&"bn_hidden.0.num_batches_tracked".to_string()));
    let mut again = fresh();
    load_model(&path, &mut again).unwrap();
    let x = fdfa::Tensor::zeros(&[2, 1, 28, 28]);
    assert_eq!(
        model.infer(&x).unwrap().data(),
        again.infer(&x).unwrap().data()
    );

    let bytes = fs::read(&path).unwrap();
    for (bad, reason) in [
        (
            without(&bytes, "fc_hidden.1.bias"),
            "tensor `fc_hidden.1.bias` is missing",
        ),
        (
            edited(&bytes, "fc_out.weight", |e| e.shape = vec![32, 10]),
            "tensor `fc_out.weight` has shape [32, 10], expected [10, 32]",
        ),
        (
            edited(&bytes, "bn_hidden.0.running_var", |e| {
                e.data[..4].copy_from_slice(&f32_bytes(&[f32::NEG_INFINITY]));
            }),
            "tensor `bn_hidden.0.running_var` holds a non-finite value (-inf) at index 0",
        ),
    ] {
        fs::write(&path, bad).unwrap();
        let mut m = fresh();
        let before = m.infer(&x).unwrap().clone();
        let err = load_model(&path, &mut m).unwrap_err();
        assert!(matches!(err, Error::Checkpoint { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("checkpoint {}: {reason}", path.display())
        );
        assert_eq!(m.infer(&x).unwrap(), &before, "the model changed");
    }
}
