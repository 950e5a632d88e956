//! `state.json`: what it holds, and the checks that a saved state fits a trainer.

use std::path::Path;

use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::tensor_file::{Wanted, bad, hex, read_bounded};
use super::{FORMAT, MAX_STATE_LEN, RunInfo, STATE_FILE, TENSORS_EXT, VERSION};
use crate::error::{Error, Result};
use crate::layers::State;
use crate::model::Model;
use crate::optim::{Adam, AdamConfig, Parameters, StepLr};
use crate::rules::Learned;
use crate::train::{Progress, TrainConfig, Trainer};

/// A tensor's name, shape and dtype, as `state.json` lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Spec {
    pub(super) name: String,
    pub(super) shape: Vec<usize>,
    /// `F32`, or `I64` for a counter.
    pub(super) dtype: String,
}

impl Spec {
    fn new(name: &str, shape: &[usize], dtype: &str) -> Self {
        Self {
            name: name.to_string(),
            shape: shape.to_vec(),
            dtype: dtype.to_string(),
        }
    }
}

impl std::fmt::Display for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} {:?}", self.name, self.dtype, self.shape)
    }
}

/// An optimizer's state besides its moments.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OptimState {
    pub(super) config: AdamConfig,
    pub(super) steps: u64,
    /// Whether the tensor file holds the moments (none before the first step).
    pub(super) moments: bool,
}

impl OptimState {
    pub(super) fn of(adam: &Adam) -> Self {
        Self {
            config: *adam.config(),
            steps: adam.steps(),
            moments: !adam.states().is_empty(),
        }
    }
}

/// The content of `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateFile {
    pub(super) format: String,
    pub(super) version: u32,
    /// The file name of the tensors, in the same folder.
    pub(super) tensors: String,
    pub(super) rule: String,
    pub(super) input_shape: Vec<usize>,
    pub(super) network: Vec<Spec>,
    pub(super) feedback: Vec<Spec>,
    pub(super) config: TrainConfig,
    pub(super) schedule: StepLr,
    pub(super) forward_opt: OptimState,
    pub(super) feedback_opt: OptimState,
    pub(super) progress: Progress,
    pub(super) run: RunInfo,
    /// The SHA-256 of the tensor file (absent in checkpoints written before checksums).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) tensors_sha256: Option<String>,
    /// The SHA-256 of this file as written with this value replaced by [`PLACEHOLDER`]; kept
    /// last, so that it is computed over everything else.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) state_sha256: Option<String>,
}

/// What `state_sha256` holds while the file's hash is computed.
const PLACEHOLDER: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether a saved state's checksums hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Integrity {
    /// Both checksums are recorded and `state.json` matches its own.
    Verified,
    /// A checkpoint written before checksums: neither is recorded.
    Unchecked,
    /// `state.json` does not match its checksum (or only one is recorded): why.
    Damaged(String),
}

impl StateFile {
    /// The JSON of this state with `state_sha256` set to the hash of that very text.
    pub(super) fn to_checksummed_json(&self, path: &Path) -> Result<Vec<u8>> {
        let mut state = self.clone();
        state.state_sha256 = Some(PLACEHOLDER.to_string());
        let mut json = serde_json::to_vec_pretty(&state)
            .map_err(|e| bad(path, format!("cannot write: {e}")))?;
        let at = find_unique(&json, PLACEHOLDER.as_bytes())
            .ok_or_else(|| bad(path, "cannot place the checksum"))?;
        let digest = hex(&Sha256::digest(&json));
        json[at..at + PLACEHOLDER.len()].copy_from_slice(digest.as_bytes());
        Ok(json)
    }
}

/// The position of the only occurrence of `needle` (quoted, as a JSON string) in `bytes`.
fn find_unique(bytes: &[u8], needle: &[u8]) -> Option<usize> {
    let mut quoted = Vec::with_capacity(needle.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(needle);
    quoted.push(b'"');
    let mut hits = bytes
        .windows(quoted.len())
        .enumerate()
        .filter(|(_, w)| *w == quoted.as_slice())
        .map(|(i, _)| i + 1);
    let first = hits.next()?;
    hits.next().is_none().then_some(first)
}

/// Checks the bytes of a `state.json` against the checksum they record.
fn integrity(bytes: &[u8], state: &StateFile) -> Integrity {
    let recorded = match (&state.tensors_sha256, &state.state_sha256) {
        (None, None) => return Integrity::Unchecked,
        (Some(_), Some(own)) => own,
        _ => {
            return Integrity::Damaged(
                "it records only one of `tensors_sha256` and `state_sha256`".to_string(),
            );
        }
    };
    let is_hex = |h: &str| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(recorded) || state.tensors_sha256.as_deref().is_some_and(|h| !is_hex(h)) {
        return Integrity::Damaged("a recorded checksum is not 64 hexadecimal digits".into());
    }
    let Some(at) = find_unique(bytes, recorded.as_bytes()) else {
        return Integrity::Damaged("its `state_sha256` cannot be found in the text".into());
    };
    let mut text = bytes.to_vec();
    text[at..at + PLACEHOLDER.len()].copy_from_slice(PLACEHOLDER.as_bytes());
    let digest = hex(&Sha256::digest(&text));
    if digest == *recorded {
        Integrity::Verified
    } else {
        Integrity::Damaged(format!(
            "its SHA-256 is {digest}, but it records `state_sha256` {recorded}"
        ))
    }
}
/// The model's state in visiting order, with PyTorch's shapes.
pub(super) fn model_specs(model: &Model) -> Vec<Spec> {
    let mut specs = Vec::new();
    model.visit_state(&mut |name, state| {
        specs.push(match state {
            State::Param(p) => Spec::new(name, &p.shape(), "F32"),
            State::Buffer(t) => Spec::new(name, t.shape(), "F32"),
            State::Counter(_) => Spec::new(name, &[], "I64"),
        });
    });
    specs
}

/// The feedback matrices of the trainer's rule.
pub(super) fn feedback_specs(trainer: &Trainer) -> Vec<Spec> {
    let mut specs = Vec::new();
    if let Some(feedback) = trainer.rule.feedback() {
        for (name, m) in feedback.names().iter().zip(feedback.matrices()) {
            specs.push(Spec::new(name, m.value.shape(), "F32"));
        }
    }
    specs
}

/// The names and PyTorch shapes of an optimizer group's parameters, in its visiting order.
fn group(params: &mut dyn Parameters) -> Vec<Spec> {
    let mut specs = Vec::new();
    params.visit_params(&mut |name, p| specs.push(Spec::new(name, &p.shape(), "F32")));
    specs
}

pub(super) fn forward_group(trainer: &mut Trainer) -> Vec<Spec> {
    group(&mut trainer.model)
}

pub(super) fn feedback_group(trainer: &mut Trainer) -> Vec<Spec> {
    group(&mut Learned(trainer.rule.as_mut()))
}

/// The message of a `state.json` that does not match its checksum.
pub(super) fn damaged_state(path: &Path, why: &str) -> Error {
    bad(
        path,
        format!("damaged or edited: {why}; restore the checkpoint from a copy"),
    )
}

/// Reads and parses `state.json` of the checkpoint folder `dir`, and checks it against its
/// checksum (the caller decides when to act on the result).
pub(super) fn read_state(dir: &Path) -> Result<(StateFile, Integrity)> {
    let path = dir.join(STATE_FILE);
    let bytes = read_bounded(&path, MAX_STATE_LEN)?;
    let state: StateFile =
        serde_json::from_slice(&bytes).map_err(|e| bad(&path, format!("invalid JSON: {e}")))?;
    if state.format != FORMAT || state.version != VERSION {
        return Err(bad(
            &path,
            format!(
                "format `{}` version {}, expected `{FORMAT}` version {VERSION}",
                state.format, state.version
            ),
        ));
    }
    let name = &state.tensors;
    let plain = !name.is_empty()
        && Path::new(name).file_name() == Some(name.as_ref())
        && name.ends_with(TENSORS_EXT);
    if !plain {
        return Err(bad(
            &path,
            format!("`tensors` must name a `{TENSORS_EXT}` file in the same folder, not `{name}`"),
        ));
    }
    let integrity = integrity(&bytes, &state);
    Ok((state, integrity))
}

/// What a reader needs of the tensors `specs` lists.
pub(super) fn wanted(path: &Path, specs: &[Spec]) -> Result<Vec<Wanted>> {
    specs
        .iter()
        .map(|s| {
            let dtype = match s.dtype.as_str() {
                "F32" => Dtype::F32,
                "I64" => Dtype::I64,
                other => {
                    return Err(bad(
                        path,
                        format!(
                            "tensor `{}` has dtype `{other}`, expected F32 or I64",
                            s.name
                        ),
                    ));
                }
            };
            Ok(Wanted {
                name: s.name.clone(),
                dtype,
                shape: s.shape.clone(),
            })
        })
        .collect()
}

/// Compares two lists of tensors and names the first difference.
fn same_specs(setting: &str, saved: &[Spec], requested: &[Spec]) -> Result<()> {
    let describe = |s: Option<&Spec>| s.map_or("(nothing)".to_string(), Spec::to_string);
    for i in 0..saved.len().max(requested.len()) {
        let (a, b) = (saved.get(i), requested.get(i));
        if a != b {
            return Err(Error::Incompatible {
                setting: setting.to_string(),
                saved: describe(a),
                requested: describe(b),
            });
        }
    }
    Ok(())
}

/// Refuses a saved state that `trainer` cannot continue exactly.
pub(super) fn check_compatible(state: &StateFile, trainer: &mut Trainer) -> Result<()> {
    let incompatible = |setting: &str, saved: String, requested: String| {
        Err(Error::Incompatible {
            setting: setting.to_string(),
            saved,
            requested,
        })
    };
    if state.rule != trainer.rule.name() {
        return incompatible("rule", state.rule.clone(), trainer.rule.name().to_string());
    }
    if state.input_shape != trainer.model.input_shape() {
        return incompatible(
            "input shape",
            format!("{:?}", state.input_shape),
            format!("{:?}", trainer.model.input_shape()),
        );
    }
    same_specs("network", &state.network, &model_specs(&trainer.model))?;
    same_specs("feedback", &state.feedback, &feedback_specs(trainer))?;
    let (a, b) = (&state.config, &trainer.config);
    let fields = [
        (
            "batch_size",
            a.batch_size.to_string(),
            b.batch_size.to_string(),
        ),
        ("lr", a.lr.to_string(), b.lr.to_string()),
        ("b_lr", a.b_lr.to_string(), b.b_lr.to_string()),
        ("gamma", a.gamma.to_string(), b.gamma.to_string()),
        (
            "weight_decay",
            a.weight_decay.to_string(),
            b.weight_decay.to_string(),
        ),
        (
            "feedback_decay",
            a.feedback_decay.to_string(),
            b.feedback_decay.to_string(),
        ),
        ("seed", a.seed.to_string(), b.seed.to_string()),
    ];
    for (field, saved, requested) in fields {
        if saved != requested {
            return incompatible(field, saved, requested);
        }
    }
    for (name, saved, adam) in [
        (
            "forward optimizer",
            &state.forward_opt,
            &trainer.forward_opt,
        ),
        (
            "feedback optimizer",
            &state.feedback_opt,
            &trainer.feedback_opt,
        ),
    ] {
        let (s, r) = (saved.config, adam.config());
        if (s.betas, s.eps, s.weight_decay) != (r.betas, r.eps, r.weight_decay) {
            return incompatible(name, format!("{s:?}"), format!("{r:?}"));
        }
    }
    if state.schedule != trainer.schedule {
        return incompatible(
            "learning-rate schedule",
            format!("{:?}", state.schedule),
            format!("{:?}", trainer.schedule),
        );
    }
    Ok(())
}

/// Checks the saved position against itself.
pub(super) fn check_progress(path: &Path, state: &StateFile) -> Result<()> {
    let p = &state.progress;
    if p.records.len() != p.epoch || p.records.iter().enumerate().any(|(i, r)| r.epoch != i + 1) {
        return Err(bad(
            path,
            format!(
                "{} epoch records for {} completed epochs",
                p.records.len(),
                p.epoch
            ),
        ));
    }
    if !p.loss_sum.is_finite() {
        return Err(bad(path, "the running loss is not finite"));
    }
    // The learning rates are not taken from the file: the forward one follows the schedule,
    // the feedback one does not decay. They must agree with it all the same.
    let lr = state.schedule.lr(p.epoch);
    if state.forward_opt.config.lr != lr {
        return Err(bad(
            path,
            format!(
                "the forward learning rate {} is not the schedule's {lr} after {} epochs",
                state.forward_opt.config.lr, p.epoch
            ),
        ));
    }
    if state.feedback_opt.config.lr != state.config.b_lr {
        return Err(bad(
            path,
            format!(
                "the feedback learning rate {} is not b_lr {}",
                state.feedback_opt.config.lr, state.config.b_lr
            ),
        ));
    }
    for (name, opt) in [
        ("forward", &state.forward_opt),
        ("feedback", &state.feedback_opt),
    ] {
        // Adam raises its betas to the step count as an `i32`.
        if opt.steps > i32::MAX as u64 || (opt.moments && opt.steps == 0) {
            return Err(bad(
                path,
                format!(
                    "the {name} optimizer's {} steps do not fit its moments",
                    opt.steps
                ),
            ));
        }
    }
    Ok(())
}
