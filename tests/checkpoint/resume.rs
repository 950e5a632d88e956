//! A run stopped after any epoch, or within one, and resumed from its checkpoint ends
//! bit-identical to the run that was never stopped, CSV log included.

use std::fs;

use fdfa::layers::State;
use fdfa::rules::RuleKind;
use fdfa::train::CsvLog;
use fdfa::train::checkpoint::{load_trainer, save_trainer};
use fdfa::{Error, train::checkpoint::RunInfo};

use super::{Setup, TempDir, assert_same, epoch, go, in_pieces, snapshot, whole};

fn resume_by_epochs(rule: RuleKind) {
    let tmp = TempDir::new(&format!("epochs-{rule}"));
    let setup = Setup::new(rule).epochs(3);
    let (state, csv) = whole(setup, tmp.path());
    let (resumed, resumed_csv, processes) = in_pieces(setup, None, tmp.path());
    assert_eq!(processes, 3);
    assert_same(&state, &resumed);
    assert_eq!(csv, resumed_csv);
    assert_eq!(csv.lines().count(), 4, "{csv}");
}

fn resume_within_epochs(rule: RuleKind) {
    let tmp = TempDir::new(&format!("batches-{rule}"));
    let setup = Setup::new(rule).epochs(2);
    let (state, csv) = whole(setup, tmp.path());
    // 16 batches an epoch: pauses after batches 5, 10 and 15, and at the end of the epoch.
    let (resumed, resumed_csv, processes) = in_pieces(setup, Some(5), tmp.path());
    assert_eq!(processes, 8);
    assert_same(&state, &resumed);
    assert_eq!(csv, resumed_csv);
}

#[test]
fn fdfa_resumed_after_every_epoch_is_bit_identical() {
    let Some(_) = crate::common::mnist_or_skip("fdfa_resumed_after_every_epoch_is_bit_identical")
    else {
        return;
    };
    resume_by_epochs(RuleKind::Fdfa);
}

#[test]
fn dkp_resumed_after_every_epoch_is_bit_identical() {
    let Some(_) = crate::common::mnist_or_skip("dkp_resumed_after_every_epoch_is_bit_identical")
    else {
        return;
    };
    resume_by_epochs(RuleKind::Dkp);
}

#[test]
fn dfa_and_bp_resumed_after_every_epoch_are_bit_identical() {
    let Some(_) =
        crate::common::mnist_or_skip("dfa_and_bp_resumed_after_every_epoch_are_bit_identical")
    else {
        return;
    };
    resume_by_epochs(RuleKind::Dfa);
    resume_by_epochs(RuleKind::Bp);
}

#[test]
fn fdfa_resumed_within_epochs_is_bit_identical() {
    let Some(_) = crate::common::mnist_or_skip("fdfa_resumed_within_epochs_is_bit_identical")
    else {
        return;
    };
    resume_within_epochs(RuleKind::Fdfa);
}

#[test]
fn dkp_resumed_within_epochs_is_bit_identical() {
    let Some(_) = crate::common::mnist_or_skip("dkp_resumed_within_epochs_is_bit_identical") else {
        return;
    };
    resume_within_epochs(RuleKind::Dkp);
}

/// The files of a checkpoint folder, sorted.
fn files(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn an_interrupted_save_leaves_the_previous_checkpoint_whole() {
    let Some(_) =
        crate::common::mnist_or_skip("an_interrupted_save_leaves_the_previous_checkpoint_whole")
    else {
        return;
    };
    let tmp = TempDir::new("interrupted-save");
    let ckpt = tmp.path().join("ckpt");
    let mut log = CsvLog::open(tmp.path().join("log.csv")).unwrap();
    let setup = Setup::new(RuleKind::Fdfa).epochs(2);
    let run = RunInfo::default();
    let mut t = setup.trainer();
    epoch(&mut t, &mut log, &mut go);
    save_trainer(&ckpt, &mut t, &run).unwrap();
    assert_eq!(files(&ckpt), ["model-000001.safetensors", "state.json"]);
    let after_one = snapshot(&mut t);
    epoch(&mut t, &mut log, &mut go);

    // What a crash before the tensor file's rename leaves (the new tensor file under its
    // temporary name), then one before the state's rename (the next tensor file in place,
    // the state not yet pointing to it): the files of a complete save, renamed as a save
    // names them on the way.
    let scratch = tmp.path().join("scratch");
    save_trainer(&scratch, &mut t, &run).unwrap();
    let written = scratch.join("model-000001.safetensors");
    fs::copy(&written, ckpt.join("model-000002.safetensors.tmp")).unwrap();
    fs::copy(&written, ckpt.join("model-000003.safetensors")).unwrap();
    // And a temporary file that a crash cut short.
    fs::write(ckpt.join("state.json.tmp"), b"{\"format\": \"fdfa-chec").unwrap();
    assert_eq!(
        files(&ckpt),
        [
            "model-000001.safetensors",
            "model-000002.safetensors.tmp",
            "model-000003.safetensors",
            "state.json",
            "state.json.tmp"
        ]
    );
    let mut fresh = setup.trainer();
    load_trainer(&ckpt, &mut fresh).unwrap();
    assert_same(&after_one, &snapshot(&mut fresh));

    // The next complete save replaces it and clears the debris.
    save_trainer(&ckpt, &mut t, &run).unwrap();
    assert_eq!(files(&ckpt), ["model-000004.safetensors", "state.json"]);
    let mut fresh = setup.trainer();
    load_trainer(&ckpt, &mut fresh).unwrap();
    assert_same(&snapshot(&mut t), &snapshot(&mut fresh));
}

/// The error of loading the checkpoint in `dir` into a trainer built by `setup`, which must
/// be left as it was.
fn refused(setup: Setup, dir: &std::path::Path) -> Error {
    let mut t = setup.trainer();
    let before = snapshot(&mut t);
    let err = load_trainer(dir, &mut t).unwrap_err();
    assert_same(&before, &snapshot(&mut t));
    err
}

#[test]
fn resuming_with_another_rule_network_or_setting_is_refused() {
    let Some(_) =
        crate::common::mnist_or_skip("resuming_with_another_rule_network_or_setting_is_refused")
    else {
        return;
    };
    let tmp = TempDir::new("incompatible");
    let ckpt = tmp.path().join("ckpt");
    let setup = Setup::new(RuleKind::Fdfa).epochs(1);
    let mut t = setup.trainer();
    let mut log = CsvLog::open(tmp.path().join("log.csv")).unwrap();
    epoch(&mut t, &mut log, &mut go);
    let mut run = RunInfo::default();
    run.settings.insert("dataset".into(), "mnist".into());
    run.settings.insert("epochs".into(), "1".into());
    save_trainer(&ckpt, &mut t, &run).unwrap();

    let incompatible = |err: Error| match err {
        Error::Incompatible {
            setting,
            saved,
            requested,
        } => (setting, saved, requested),
        other => panic!("expected Error::Incompatible, got {other:?}"),
    };
    let cases = [
        (Setup::new(RuleKind::Dkp), ("rule", "FDFA", "DKP")),
        (
            Setup { width: 16, ..setup },
            (
                "network",
                "fc_hidden.0.weight: F32 [32, 784]",
                "fc_hidden.0.weight: F32 [16, 784]",
            ),
        ),
        (
            Setup { layers: 1, ..setup },
            (
                "network",
                "fc_hidden.1.weight: F32 [32, 32]",
                "fc_out.weight: F32 [10, 32]",
            ),
        ),
        (Setup { lr: 0.5, ..setup }, ("lr", "0.001", "0.5")),
    ];
    for (other, (setting, saved, requested)) in cases {
        let err = refused(other, &ckpt);
        let message = err.to_string();
        assert_eq!(
            incompatible(err),
            (setting.into(), saved.into(), requested.into()),
            "{other:?}"
        );
        assert_eq!(
            message,
            format!("incompatible {setting}: saved `{saved}`, requested `{requested}`")
        );
    }

    // More epochs are fine; so is another value of a setting the caller declares free.
    let mut more = setup.epochs(5).trainer();
    let saved = load_trainer(&ckpt, &mut more).unwrap();
    let mut now = saved.settings.clone();
    now.insert("epochs".into(), "5".into());
    saved.check_settings(&now, &["epochs"]).unwrap();
    now.insert("dataset".into(), "fashion-mnist".into());
    let (setting, ..) = incompatible(saved.check_settings(&now, &["epochs"]).unwrap_err());
    assert_eq!(setting, "dataset");
}

/// The file holds every tensor in PyTorch's layout, the optimizer's moments included: a
/// `Linear` weight is written `[out, in]` and so are its moments. After one Adam step from
/// zero moments (no weight decay), `exp_avg = (1 - beta1) g` exactly, so the moments in the
/// file must be the gradient of PyTorch's layout, scaled, whatever layout the layer keeps.
#[test]
fn weights_and_their_moments_are_written_in_pytorch_layout() {
    let Some(_) =
        crate::common::mnist_or_skip("weights_and_their_moments_are_written_in_pytorch_layout")
    else {
        return;
    };
    let tmp = TempDir::new("layout");
    let mut t = Setup::new(RuleKind::Bp).epochs(1).trainer();
    t.train_epoch(&super::mnist().0, &mut |_| std::ops::ControlFlow::Break(()))
        .unwrap();
    let ckpt = tmp.path().join("ckpt");
    save_trainer(&ckpt, &mut t, &RunInfo::default()).unwrap();
    let file = fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .unwrap();
    let bytes = fs::read(file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let read = |name: &str| -> (Vec<usize>, Vec<f32>) {
        let view = tensors.tensor(name).unwrap();
        let values = view
            .data()
            .chunks(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (view.shape().to_vec(), values)
    };
    let b1 = t.forward_optimizer().config().betas.0;
    let mut matrices = 0;
    t.model().visit_state(&mut |name, state| {
        let State::Param(p) = state else { return };
        let value = p.value();
        assert_eq!(
            read(name),
            (value.shape().to_vec(), value.data().to_vec()),
            "{name}"
        );
        let (moment_shape, moment) = read(&format!("optim.forward.{name}.exp_avg"));
        assert_eq!(moment_shape, value.shape(), "{name}");
        let want: Vec<f32> = p.grad().data().iter().map(|g| (1.0 - b1) * g).collect();
        assert_eq!(moment, want, "{name}");
        let (exp_avg, _) = t.forward_optimizer().moments(name, &p).unwrap();
        assert_eq!(exp_avg.data(), &want[..], "{name}");
        matrices += usize::from(value.shape().len() == 2 && name.ends_with("weight"));
    });
    // fc_hidden.0, fc_hidden.1 and fc_out.
    assert_eq!(matrices, 3);
    assert_eq!(read("fc_hidden.0.weight").0, vec![32, 784]);
}
