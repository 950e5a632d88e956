//! Checkpoints: the complete state of a training run, saved so that it resumes exactly.
//!
//! A checkpoint is a folder of two files:
//!
//! - `model-<generation>.safetensors` holds every tensor under the reference's PyTorch
//!   `state_dict` names: the forward parameters and BatchNorm buffers (`fc_hidden.0.weight`,
//!   `bn_hidden.0.running_mean`, `bn_hidden.0.num_batches_tracked` as an `I64` scalar), the
//!   feedback matrices (`fc_dfa.0.feedbacks`), and the moments of the two optimizers under
//!   `optim.forward.<name>.exp_avg`, `optim.forward.<name>.exp_avg_sq`,
//!   `optim.feedback.<name>.exp_avg`, ...; all in PyTorch's layout (a `Linear` weight and its
//!   moments are `[out, in]`, though the layer keeps the weight as `[in, out]`);
//! - `state.json` holds the rest: the rule, the network's layout, the training settings, the
//!   learning-rate schedule, the optimizers' step counts and hyper-parameters, the position
//!   (epoch, batch, running loss), the rule's random generator, the epoch records, a
//!   [`RunInfo`] (the caller's settings and the name of the run's log), the SHA-256 of the
//!   tensor file (`tensors_sha256`) and that of `state.json` itself (`state_sha256`, the hash
//!   of the file as written with this value set to 64 zeros).
//!
//! Every file is written atomically (temporary file, `fsync`, rename, `fsync` of the folder;
//! a failed write removes its temporary file) and `state.json` is written last and names its
//! tensor file: a crash at any point of a save leaves the previous checkpoint whole. Loading
//! checks everything before it changes anything: the tensor file's header against its
//! length before any data is read, every tensor against the saved layout (none missing,
//! none extra), every value, and last both checksums, so that damage no other check can see
//! is refused too. A checkpoint written before checksums loads unverified
//! ([`has_checksums`] tells). A process using a folder holds its [`CheckpointLock`].
//!
//! In PyTorch:
//!
//! ```python
//! from safetensors.torch import load_file
//! state = load_file("model-000003.safetensors")
//! model.load_state_dict({k: v for k, v in state.items() if not k.startswith("optim.")})
//! ```
//!
//! A run saved and resumed:
//!
//! ```
//! use std::ops::ControlFlow;
//! use fdfa::data::Dataset;
//! use fdfa::rules::RuleKind;
//! use fdfa::train::checkpoint::{RunInfo, load_trainer, save_trainer};
//! use fdfa::train::{TrainConfig, Trainer};
//!
//! # fn main() -> fdfa::Result<()> {
//! let pixels: Vec<u8> = (0..64 * 16).map(|i| ((i * 37) % 256) as u8).collect();
//! let labels: Vec<u32> = (0..64).map(|i| (i % 2) as u32).collect();
//! let data = Dataset::new(pixels, labels, [1, 4, 4], 2)?;
//! let trainer = |epochs| -> fdfa::Result<Trainer> {
//!     let mut rng = fdfa::init::rng(0);
//!     let model = fdfa::model::fc(&[1, 4, 4], 1, 8, 2, &mut rng)?;
//!     let rule = RuleKind::Fdfa.build(&model, 1, &mut rng)?;
//!     Trainer::new(model, rule, TrainConfig::default().with_batch_size(16).with_epochs(epochs))
//! };
//! let go = &mut |_: &_| ControlFlow::Continue(());
//! let dir = std::env::temp_dir().join(format!("fdfa-doc-ckpt-{}", std::process::id()));
//!
//! let mut whole = trainer(2)?;
//! whole.fit(&data, &data, go)?;
//!
//! let mut first = trainer(1)?;
//! first.fit(&data, &data, go)?;
//! save_trainer(&dir, &mut first, &RunInfo::default())?;
//! let mut resumed = trainer(2)?;
//! load_trainer(&dir, &mut resumed)?;
//! let records = resumed.fit(&data, &data, go)?;
//! assert_eq!(records, whole.progress().records);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod lock;
mod state;
mod tensor_file;

pub use lock::{CheckpointLock, LOCK_FILE};
use state::{
    Integrity, OptimState, Spec, StateFile, check_compatible, check_progress, damaged_state,
    feedback_group, feedback_specs, forward_group, model_specs, read_state, wanted,
};
use tensor_file::{Header, Item, Tensors, Wanted, bad};

use super::atomic::{TMP_SUFFIX, sync_dir, write_atomic};
use super::{Progress, Trainer};
use crate::error::{Error, Result};
use crate::layers::{State, StateMut};
use crate::model::Model;
use crate::optim::{Adam, AdamState, Parameters};
use crate::rules::Learned;
use crate::tensor::Tensor;

/// The file of a checkpoint folder that holds everything but the tensors.
pub const STATE_FILE: &str = "state.json";
/// The prefix of the forward optimizer's moments in the tensor file.
pub const FORWARD_PREFIX: &str = "optim.forward.";
/// The prefix of the feedback optimizer's moments in the tensor file.
pub const FEEDBACK_PREFIX: &str = "optim.feedback.";
const FORMAT: &str = "fdfa-checkpoint";
const VERSION: u32 = 1;
/// The largest `state.json` read (its epoch records grow by about 100 bytes an epoch).
const MAX_STATE_LEN: u64 = 64 << 20;
const TENSORS_STEM: &str = "model-";
const TENSORS_EXT: &str = ".safetensors";

/// What a checkpoint records about the run beyond the trainer: the caller's settings (the
/// examples store their command line here) and the run's log.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Settings by name, e.g. `dataset = mnist`, `train-mode = FDFA`.
    pub settings: BTreeMap<String, String>,
    /// The run's CSV log as the caller recorded it (the examples record its file name; the
    /// log lives next to the checkpoint folder). A checkpoint is input: fdfa never writes
    /// to this path, and a caller should not either without checking where it points.
    pub log: Option<PathBuf>,
}

impl RunInfo {
    /// Checks that `requested` holds the same settings as this saved run, except those named
    /// in `free` (settings that may change on resume, such as the number of epochs).
    ///
    /// ```
    /// use fdfa::train::checkpoint::RunInfo;
    /// let mut saved = RunInfo::default();
    /// saved.settings.insert("train-mode".into(), "FDFA".into());
    /// saved.settings.insert("epochs".into(), "3".into());
    /// let mut now = saved.settings.clone();
    /// now.insert("epochs".into(), "5".into());
    /// assert!(saved.check_settings(&now, &["epochs"]).is_ok());
    /// now.insert("train-mode".into(), "DKP".into());
    /// let err = saved.check_settings(&now, &["epochs"]).unwrap_err();
    /// assert_eq!(err.to_string(), "incompatible train-mode: saved `FDFA`, requested `DKP`");
    /// ```
    ///
    /// # Errors
    /// [`Error::Incompatible`] naming the first setting (in name order) that differs or that
    /// only one side has.
    pub fn check_settings(
        &self,
        requested: &BTreeMap<String, String>,
        free: &[&str],
    ) -> Result<()> {
        let unset = || "(not set)".to_string();
        for key in self.settings.keys().chain(requested.keys()) {
            if free.contains(&key.as_str()) {
                continue;
            }
            let (saved, now) = (self.settings.get(key), requested.get(key));
            if saved != now {
                return Err(Error::Incompatible {
                    setting: key.clone(),
                    saved: saved.cloned().unwrap_or_else(unset),
                    requested: now.cloned().unwrap_or_else(unset),
                });
            }
        }
        Ok(())
    }
}

/// Yields a model's state to a tensor-file visitor, in PyTorch's layout.
fn visit_model(model: &Model, f: &mut dyn FnMut(&str, Item<'_>)) {
    model.visit_state(&mut |name, state| match state {
        State::Param(p) => f(name, Item::F32(&p.value())),
        State::Buffer(t) => f(name, Item::F32(t)),
        State::Counter(c) => f(name, Item::Counter(c)),
    });
}

/// Yields an optimizer's moments under `prefix`, in the visiting order of its parameter
/// group and in the PyTorch layout of each parameter.
fn visit_moments(
    prefix: &str,
    params: &mut dyn Parameters,
    adam: &Adam,
    f: &mut dyn FnMut(&str, Item<'_>),
) {
    params.visit_params(&mut |name, p| {
        if let Some((exp_avg, exp_avg_sq)) = adam.moments(name, &p.view()) {
            f(&format!("{prefix}{name}.exp_avg"), Item::F32(&exp_avg));
            f(
                &format!("{prefix}{name}.exp_avg_sq"),
                Item::F32(&exp_avg_sq),
            );
        }
    });
}

/// Saves a model's state (parameters, buffers, counters) to the safetensors file `path`,
/// atomically, under its PyTorch `state_dict` names.
///
/// # Errors
/// [`Error::Io`] when the file cannot be written.
///
/// ```
/// use fdfa::train::checkpoint::{load_model, save_model};
/// # fn main() -> fdfa::Result<()> {
/// let path = std::env::temp_dir().join(format!("fdfa-doc-model-{}.safetensors", std::process::id()));
/// let mut a = fdfa::model::fc(&[1, 4, 4], 1, 8, 2, &mut fdfa::init::rng(1))?;
/// let mut b = fdfa::model::fc(&[1, 4, 4], 1, 8, 2, &mut fdfa::init::rng(2))?;
/// save_model(&path, &a)?;
/// load_model(&path, &mut b)?;
/// let x = fdfa::Tensor::zeros(&[1, 1, 4, 4]);
/// assert_eq!(a.infer(&x)?.data(), b.infer(&x)?.data());
/// # std::fs::remove_file(&path).ok();
/// # Ok(())
/// # }
/// ```
pub fn save_model(path: impl AsRef<Path>, model: &Model) -> Result<()> {
    check_unique_names(model)?;
    tensor_file::write(path.as_ref(), true, &mut |f| visit_model(model, f)).map(drop)
}

/// A tensor file maps names to tensors: two tensors under one name cannot be saved.
fn check_unique_names(model: &Model) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    let mut duplicate = None;
    model.visit_state(&mut |name, _| {
        if !seen.insert(name.to_string()) && duplicate.is_none() {
            duplicate = Some(name.to_string());
        }
    });
    match duplicate {
        None => Ok(()),
        Some(name) => Err(Error::config(
            "model",
            "names",
            format!("two tensors are named `{name}`; give the layers distinct names"),
        )),
    }
}

/// Loads a model's state from the safetensors file `path` (as [`save_model`] or PyTorch's
/// `safetensors.torch.save_file(model.state_dict())` write it). Tensors the model does not
/// have (feedback matrices, optimizer moments) are ignored. Nothing changes unless every
/// tensor is valid.
///
/// Only the header and the model's own tensors are read.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Checkpoint`] for something other
/// than a regular file, a file that is not valid safetensors (truncated, too long, a
/// corrupt header) and for a tensor of the model that is missing, has another dtype or
/// shape, or holds a non-finite value (or a negative running variance), naming the tensor.
pub fn load_model(path: impl AsRef<Path>, model: &mut Model) -> Result<()> {
    let path = path.as_ref();
    let specs = model_specs(model);
    let tensors = Header::open(path)?.read_some(&wanted(path, &specs)?)?;
    let staged = stage(&tensors, &specs)?;
    apply_model(model, staged);
    Ok(())
}

/// A tensor read and checked, waiting to be applied.
enum Staged {
    F32(Vec<f32>),
    Counter(u64),
}

fn stage(tensors: &Tensors, specs: &[Spec]) -> Result<Vec<Staged>> {
    specs
        .iter()
        .map(|s| match s.dtype.as_str() {
            "I64" => tensors.counter(&s.name).map(Staged::Counter),
            _ => tensors.f32(&s.name, &s.shape).map(Staged::F32),
        })
        .collect()
}

/// Copies staged values (in [`model_specs`] order, shapes checked, PyTorch's layout) into
/// the model.
fn apply_model(model: &mut Model, staged: Vec<Staged>) {
    let mut staged = staged.into_iter();
    model.visit_state_mut(&mut |_, state| match (state, staged.next()) {
        (StateMut::Param(mut p), Some(Staged::F32(v))) => {
            let ok = Tensor::from_vec(&p.shape(), v).and_then(|t| p.set_value(&t));
            debug_assert!(ok.is_ok(), "staged values have the model's shapes");
        }
        (StateMut::Buffer(mut t), Some(Staged::F32(v))) => t.data_mut().copy_from_slice(&v),
        (StateMut::Counter(c), Some(Staged::Counter(v))) => *c = v,
        _ => debug_assert!(false, "staged values follow the model's order"),
    });
}

/// Saves the complete state of `trainer` into the folder `dir` (created if needed), with
/// `run`; see the [module documentation](self) for the layout. The previous checkpoint in
/// `dir` stays whole until the new one is complete, and is then removed.
///
/// # Errors
/// [`Error::Io`] when a file cannot be written; [`Error::NonFinite`] when the running loss
/// or an epoch record is not finite (JSON cannot hold it).
pub fn save_trainer(dir: impl AsRef<Path>, trainer: &mut Trainer, run: &RunInfo) -> Result<()> {
    save(dir.as_ref(), trainer, run)
}

fn save(dir: &Path, trainer: &mut Trainer, run: &RunInfo) -> Result<()> {
    check_finite(&trainer.progress)?;
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let generation = existing_generations(dir)?.into_iter().max().unwrap_or(0) + 1;
    let tensors = format!("{TENSORS_STEM}{generation:06}{TENSORS_EXT}");
    check_unique_names(&trainer.model)?;
    if !group_complete(&trainer.forward_opt, &mut trainer.model)
        || !group_complete(&trainer.feedback_opt, &mut Learned(trainer.rule.as_mut()))
    {
        return Err(bad(
            dir,
            "an optimizer holds moments for a different set of parameters",
        ));
    }
    let mut state = StateFile {
        format: FORMAT.to_string(),
        version: VERSION,
        tensors: tensors.clone(),
        rule: trainer.rule.name().to_string(),
        input_shape: trainer.model.input_shape().to_vec(),
        network: model_specs(&trainer.model),
        feedback: feedback_specs(trainer),
        config: trainer.config.clone(),
        schedule: trainer.schedule,
        forward_opt: OptimState::of(&trainer.forward_opt),
        feedback_opt: OptimState::of(&trainer.feedback_opt),
        progress: trainer.progress.clone(),
        run: run.clone(),
        tensors_sha256: None,
        state_sha256: None,
    };
    let sha256 = tensor_file::write(&dir.join(&tensors), true, &mut |f| {
        visit_model(&trainer.model, f);
        if let Some(feedback) = trainer.rule.feedback() {
            for (name, m) in feedback.names().iter().zip(feedback.matrices()) {
                f(name, Item::F32(&m.value));
            }
        }
        visit_moments(FORWARD_PREFIX, &mut trainer.model, &trainer.forward_opt, f);
        visit_moments(
            FEEDBACK_PREFIX,
            &mut Learned(trainer.rule.as_mut()),
            &trainer.feedback_opt,
            f,
        );
    })?;
    state.tensors_sha256 = Some(sha256);
    let json = state.to_checksummed_json(&dir.join(STATE_FILE))?;
    write_atomic(&dir.join(STATE_FILE), true, |out| out.write_all(&json))?;
    remove_stale(dir, &tensors)
}

/// Whether an optimizer has no moments yet, or one pair per parameter of its group, each
/// shaped like its parameter.
fn group_complete(adam: &Adam, params: &mut dyn Parameters) -> bool {
    let states = adam.states();
    if states.is_empty() {
        return true;
    }
    let (mut count, mut fits) = (0, true);
    params.visit_params(&mut |name, p| {
        count += 1;
        let stored = p.view().stored_shape();
        fits &= states
            .get(name)
            .is_some_and(|s| s.exp_avg.shape() == stored && s.exp_avg_sq.shape() == stored);
    });
    fits && count == states.len()
}

/// JSON has no NaN or infinity: refuse to save them rather than write a file that cannot be
/// read back.
fn check_finite(progress: &Progress) -> Result<()> {
    let nonfinite = |tensor: &str, epoch| Error::NonFinite {
        tensor: tensor.to_string(),
        epoch,
        batch: progress.batch,
    };
    if !progress.loss_sum.is_finite() {
        return Err(nonfinite("running training loss", progress.epoch + 1));
    }
    for r in &progress.records {
        for (what, v) in [
            ("training loss", r.train_loss),
            ("test loss", r.test_loss),
            ("test accuracy", r.test_accuracy),
        ] {
            if !v.is_finite() {
                return Err(nonfinite(what, r.epoch));
            }
        }
    }
    Ok(())
}

/// The generations of the tensor files in `dir`.
fn existing_generations(dir: &Path) -> Result<Vec<u64>> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            let name = name.strip_suffix(TMP_SUFFIX).unwrap_or(name);
            name.strip_prefix(TENSORS_STEM)?
                .strip_suffix(TENSORS_EXT)?
                .parse()
                .ok()
        })
        .collect())
}

/// Removes the tensor files other than `keep`, and temporary files of interrupted saves.
fn remove_stale(dir: &Path, keep: &str) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let ours = name.starts_with(TENSORS_STEM) && name.contains(TENSORS_EXT);
        let stale = name != keep && (ours || name == format!("{STATE_FILE}{TMP_SUFFIX}"));
        if stale {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// The [`RunInfo`] saved in the checkpoint folder `dir`, e.g. to rebuild the run's settings
/// before building the trainer.
///
/// # Errors
/// [`Error::Io`] when `state.json` cannot be read; [`Error::Checkpoint`] when it is not a
/// checkpoint's state.
pub fn read_run_info(dir: impl AsRef<Path>) -> Result<RunInfo> {
    let dir = dir.as_ref();
    let (state, integrity) = read_state(dir)?;
    if let Integrity::Damaged(why) = integrity {
        return Err(damaged_state(&dir.join(STATE_FILE), &why));
    }
    Ok(state.run)
}

/// Whether the checkpoint in `dir` records checksums of its files. Those written before
/// fdfa recorded them do not: they still load (refusing them would strand every run saved
/// before), but a damaged file in them goes unnoticed unless its damage breaks a check;
/// the next save of the run adds the checksums.
///
/// # Errors
/// As [`read_run_info`].
pub fn has_checksums(dir: impl AsRef<Path>) -> Result<bool> {
    let dir = dir.as_ref();
    match read_state(dir)? {
        (_, Integrity::Verified) => Ok(true),
        (_, Integrity::Unchecked) => Ok(false),
        (_, Integrity::Damaged(why)) => Err(damaged_state(&dir.join(STATE_FILE), &why)),
    }
}

/// Removes the temporary files that interrupted or failed saves left in the checkpoint
/// folder; the lock proves that no other process is saving there. Returns the files
/// removed.
///
/// # Errors
/// [`Error::Io`] when the folder cannot be listed or a file cannot be removed.
pub fn remove_temporaries(lock: &CheckpointLock) -> Result<Vec<PathBuf>> {
    let dir = lock.dir();
    let entries = fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut removed = Vec::new();
    for entry in entries.filter_map(|e| e.ok()) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(target) = name.strip_suffix(TMP_SUFFIX) else {
            continue;
        };
        let ours = target == STATE_FILE
            || (target.starts_with(TENSORS_STEM) && target.ends_with(TENSORS_EXT));
        if ours {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(dir)?;
    }
    Ok(removed)
}

/// The moments of an optimizer group, all or none as `saved` says, in PyTorch's layout.
fn stage_moments(
    tensors: &Tensors,
    prefix: &str,
    group: &[Spec],
    saved: &OptimState,
) -> Result<Vec<(Tensor, Tensor)>> {
    if !saved.moments {
        return Ok(Vec::new());
    }
    group
        .iter()
        .map(|s| {
            let read =
                |suffix: &str| tensors.tensor(&format!("{prefix}{}.{suffix}", s.name), &s.shape);
            Ok((read("exp_avg")?, read("exp_avg_sq")?))
        })
        .collect()
}

/// Staged moments (in the group's visiting order, PyTorch's layout) in each parameter's
/// storage layout, by name.
fn moments_by_name(
    params: &mut dyn Parameters,
    staged: Vec<(Tensor, Tensor)>,
) -> BTreeMap<String, AdamState> {
    let mut out = BTreeMap::new();
    if staged.is_empty() {
        return out;
    }
    let mut staged = staged.into_iter();
    params.visit_params(&mut |name, p| {
        if let Some((m, v)) = staged.next() {
            let p = p.view();
            out.insert(
                name.to_string(),
                AdamState {
                    exp_avg: p.stored_from_torch(&m),
                    exp_avg_sq: p.stored_from_torch(&v),
                },
            );
        }
    });
    out
}

/// Restores `trainer` from the checkpoint folder `dir` and returns the saved [`RunInfo`].
///
/// The trainer must have been built like the saved one: same rule, network and training
/// settings (the number of epochs may differ). Every tensor and the state are checked before
/// anything changes, so on error the trainer is as it was.
///
/// # Errors
/// [`Error::Io`] when a file cannot be read; [`Error::Incompatible`] naming the setting
/// (`rule`, `network`, `feedback`, `lr`, ...) in which the trainer differs from the saved
/// run; [`Error::Checkpoint`] for malformed files: something other than a regular file,
/// invalid JSON, a tensor file that is not valid safetensors (truncated, too long), a
/// tensor that is missing, extra, misshapen, of another dtype, not finite or (a variance, a
/// second moment) negative, and files that do not match their recorded SHA-256 (damaged).
pub fn load_trainer(dir: impl AsRef<Path>, trainer: &mut Trainer) -> Result<RunInfo> {
    let dir = dir.as_ref();
    let state_path = dir.join(STATE_FILE);
    let (state, integrity) = read_state(dir)?;
    check_compatible(&state, trainer)?;
    check_progress(&state_path, &state)?;
    let tensors_path = dir.join(&state.tensors);
    let expected = expected_tensors(&tensors_path, &state, trainer)?;
    let tensors = Header::open(&tensors_path)?.read_all(&expected)?;
    let model = stage(&tensors, &state.network)?;
    let feedback: Vec<Tensor> = state
        .feedback
        .iter()
        .map(|s| tensors.tensor(&s.name, &s.shape))
        .collect::<Result<_>>()?;
    let forward_specs = forward_group(trainer);
    let forward = stage_moments(&tensors, FORWARD_PREFIX, &forward_specs, &state.forward_opt)?;
    let learned_specs = feedback_group(trainer);
    let learned = stage_moments(
        &tensors,
        FEEDBACK_PREFIX,
        &learned_specs,
        &state.feedback_opt,
    )?;
    // Last, so that a defect the checks above can name is named; what they cannot see
    // (a flipped bit that leaves every value plausible) is caught here.
    match integrity {
        Integrity::Damaged(why) => return Err(damaged_state(&state_path, &why)),
        Integrity::Verified => check_tensors_hash(&tensors, state.tensors_sha256.as_deref())?,
        Integrity::Unchecked => {}
    }

    // Everything is checked: from here on nothing fails.
    apply_model(&mut trainer.model, model);
    if let Some(fb) = trainer.rule.feedback_mut() {
        for (l, v) in feedback.iter().enumerate() {
            let ok = fb.set(l, v);
            debug_assert!(ok.is_ok(), "staged feedback has the rule's shapes");
        }
    }
    let forward = moments_by_name(&mut trainer.model, forward);
    let learned = moments_by_name(&mut Learned(trainer.rule.as_mut()), learned);
    trainer.restore(
        (state.forward_opt.steps, forward),
        (state.feedback_opt.steps, learned),
        state.progress,
    );
    Ok(state.run)
}

/// Every tensor the checkpoint `state` must hold, and nothing else: the model's state, the
/// feedback matrices, and the moments of each optimizer that has taken a step.
fn expected_tensors(path: &Path, state: &StateFile, trainer: &mut Trainer) -> Result<Vec<Wanted>> {
    let mut all = wanted(path, &state.network)?;
    all.extend(wanted(path, &state.feedback)?);
    // Moments are saved in each parameter's PyTorch layout, which the groups' specs give.
    let groups = [
        (FORWARD_PREFIX, forward_group(trainer), &state.forward_opt),
        (
            FEEDBACK_PREFIX,
            feedback_group(trainer),
            &state.feedback_opt,
        ),
    ];
    for (prefix, group, saved) in groups {
        if !saved.moments {
            continue;
        }
        for spec in &group {
            for suffix in ["exp_avg", "exp_avg_sq"] {
                all.push(Wanted {
                    name: format!("{prefix}{}.{suffix}", spec.name),
                    dtype: safetensors::Dtype::F32,
                    shape: spec.shape.clone(),
                });
            }
        }
    }
    Ok(all)
}

/// Compares the hash of a tensor file read whole with the one `state.json` recorded.
fn check_tensors_hash(tensors: &Tensors, recorded: Option<&str>) -> Result<()> {
    let (Some(found), Some(recorded)) = (tensors.sha256(), recorded) else {
        return Ok(());
    };
    if found.eq_ignore_ascii_case(recorded) {
        return Ok(());
    }
    Err(bad(
        tensors.path(),
        format!(
            "damaged: its SHA-256 is {found}, but {STATE_FILE} recorded {recorded}; restore \
             the checkpoint from a copy"
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_missing_on_one_side_are_named() {
        let saved = RunInfo::default();
        let mut now = BTreeMap::new();
        now.insert("dataset".to_string(), "mnist".to_string());
        let err = saved.check_settings(&now, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "incompatible dataset: saved `(not set)`, requested `mnist`"
        );
    }
}
